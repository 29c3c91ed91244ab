"""Benchmark: the streamed ``factorize`` stage vs tensorly's Tucker, at equal reconstruction error.

For each N in ``--tokens`` a synthetic dump is written like ``dump_hidden`` writes one (float16
Zarr, ``--layers`` x ``--hidden``, examples of ~30 CoT tokens; low rank plus noise, layer norms
growing with depth). Every engine runs on the same store in its own subprocess, so its peak
RSS is its own (psutil samples the child; the child's own ``ru_maxrss`` catches short peaks):

- ``lori``: ``lori.factorize.run`` with ``method=hooi`` (``--hooi-iters`` streamed passes after
  the HOSVD), uncentred and unscaled — the model tensorly fits. The time covers everything the
  stage does: reading the store, the Grams, HOOI, the per-example diagnostics, writing factors.
- ``tensorly``: the store read into one float64 array, then
  ``tensorly.decomposition.partial_tucker(X, rank=[r_L, r_d], modes=[1, 2])`` — the HOOI that
  ``tensorly.decomposition.tucker`` runs, restricted to the layer and hidden modes
  (``tucker`` itself would also factor the token mode, an N x N matrix). Where the tensor would
  not fit in ``--max-gib`` the plain unfolding SVD (HOSVD by ``numpy.linalg.svd`` of each mode
  unfolding) stands in, and past that the baseline is skipped. Above ``--baseline-max-tokens``
  (default 1e5: tensorly needs minutes per 1e5 tokens) only lori runs, to show its memory
  staying flat.

Reconstruction error is tensorly's: ``||X - X_hat|| / ||X||``. Run (~3 minutes on 2 cores)::

    python bench/factorize.py [--tokens 1e4,1e5,1e6] [--layers 4 --hidden 128 --rank-layer 2 --rank-hidden 16]

The last line prints the speed ratio (baseline time / lori time) and the memory ratio (baseline
peak RSS / lori peak RSS) at the largest N both engines ran at, and lori's peak RSS at the
smallest and largest N.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKENS_PER_EXAMPLE = 30


# ---------------------------------------------------------------- the synthetic dump
def write_store(path: Path, n: int, layers: int, hidden: int, true_ranks: tuple[int, int], seed: int = 0) -> None:
    """Low-rank-plus-noise states ``[n, layers, hidden]`` as float16 Zarr, written chunk by chunk."""
    import zarr

    sys.path.insert(0, str(ROOT))
    from lori.artifacts.store import zarr_create, zarr_put

    rng = np.random.default_rng(seed)
    A = np.linalg.qr(rng.standard_normal((layers, true_ranks[0])))[0]
    B = np.linalg.qr(rng.standard_normal((hidden, true_ranks[1])))[0]
    decay = np.exp(-np.arange(true_ranks[0]))[:, None] * np.exp(-np.arange(true_ranks[1]) / 8)[None, :]
    depth = np.linspace(1.0, 4.0, layers)[None, :, None]           # deeper layers, larger norms
    g = zarr.open_group(str(path), mode="w")
    rows = max(1, (16 << 20) // (layers * hidden * 4))              # dump_hidden's chunking
    states = zarr_create(g, "states", (n, layers, hidden), "float16", ["token", "layer", "hidden"],
                         chunks=(min(rows, n), layers, hidden))
    for lo in range(0, n, rows):
        t = min(rows, n - lo)
        core = rng.standard_normal((t, *true_ranks)) * decay
        h = np.einsum("trs,lr,ds->tld", core, A, B) + 0.05 * rng.standard_normal((t, layers, hidden))
        states[lo : lo + t] = (h * depth).astype(np.float16)
    lengths = np.full(n // TOKENS_PER_EXAMPLE, TOKENS_PER_EXAMPLE)
    lengths[-1] += n - lengths.sum()
    zarr_put(g, "offsets", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), ["example_plus_one"])
    g.attrs.update({"stage": "dump_hidden", "layers": list(range(1, layers + 1)), "model": "synthetic"})


# ---------------------------------------------------------------- one engine, in a child process
def run_lori(store: str, args) -> dict:
    sys.path.insert(0, str(ROOT))
    from lori.factorize import FactorizeConfig, run

    cfg = FactorizeConfig(rank_layer=args.rank_layer, rank_hidden=args.rank_hidden, center=False, layer_scaling="none",
                          method="hooi", hooi_iters=args.hooi_iters)
    t0 = time.perf_counter()
    state = run(cfg, store, str(Path(store).with_name("factors.zarr")))
    return {"time_s": time.perf_counter() - t0, "error": state.errors[-1], "engine": f"lori hooi x{args.hooi_iters}"}


def run_tensorly(store: str, args) -> dict:
    import zarr

    t0 = time.perf_counter()
    X = np.asarray(zarr.open_group(store, mode="r")["states"][...], dtype=np.float64)     # [N, L, d]
    norm2 = float(np.vdot(X, X))
    if args.engine == "tensorly":
        from tensorly.decomposition import partial_tucker

        (core, _), _ = partial_tucker(X, rank=[args.rank_layer, args.rank_hidden], modes=[1, 2])
        engine = "tensorly partial_tucker"
    else:  # plain HOSVD: right singular vectors of the tall [N*L, d] and [N*d, L] unfoldings
        U_l = np.linalg.svd(X.transpose(0, 2, 1).reshape(-1, X.shape[1]), full_matrices=False)[2].T[:, : args.rank_layer]
        U_d = np.linalg.svd(X.reshape(-1, X.shape[2]), full_matrices=False)[2].T[:, : args.rank_hidden]
        core = np.einsum("tld,lr,ds->trs", X, U_l, U_d, optimize=True)
        engine = "numpy unfolding SVD"
    error = float(np.sqrt(max(norm2 - float(np.vdot(core, core)), 0.0) / norm2))
    return {"time_s": time.perf_counter() - t0, "error": error, "engine": engine}


def child(args) -> None:
    res = run_lori(args.store, args) if args.engine == "lori" else run_tensorly(args.store, args)
    res["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024           # KiB on Linux
    print("RESULT " + json.dumps(res), flush=True)


def measure(engine: str, store: Path, args) -> dict:
    """Run one engine in a subprocess; its peak RSS from psutil sampling and its own ru_maxrss."""
    import psutil

    cmd = [sys.executable, __file__, "--child", engine, "--store", str(store), "--rank-layer", str(args.rank_layer),
           "--rank-hidden", str(args.rank_hidden), "--hooi-iters", str(args.hooi_iters)]
    blas = {k: str(args.threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **blas})
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.01)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{engine} failed on {store}:\n{err[-2000:]}")
    res = json.loads(lines[-1][7:])
    res["rss"] = max(peak, res.pop("ru_maxrss"))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1e4,1e5,1e6", help="comma-separated token counts")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--rank-layer", type=int, default=2)
    ap.add_argument("--rank-hidden", type=int, default=16)
    ap.add_argument("--hooi-iters", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS threads of both engines")
    ap.add_argument("--baseline-max-tokens", type=float, default=1e5,
                    help="largest N the baseline runs at (tensorly needs minutes per 1e5 tokens; default keeps the run ~3 min)")
    ap.add_argument("--max-gib", type=float, default=None,
                    help="memory the baseline may use (default: 80%% of available RAM)")
    ap.add_argument("--workdir", default=None, help="where the synthetic stores go (default: a temp dir)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.engine = args.child
        return child(args)

    import psutil

    budget = (args.max_gib * 2**30) if args.max_gib else 0.8 * psutil.virtual_memory().available
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lori-bench-"))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores ({args.threads} BLAS threads), "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, numpy {np.__version__}; "
          f"L={args.layers} d={args.hidden}, ranks {args.rank_layer}x{args.rank_hidden}")
    header = "| tokens | lori s | lori peak RSS | lori error | baseline | baseline s | baseline peak RSS | baseline error | speed-up | memory ratio |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    last, runs = None, []
    try:
        for n in (int(float(t)) for t in args.tokens.split(",")):
            store = work / f"n{n}" / "calib.zarr"
            write_store(store, n, args.layers, args.hidden, (args.rank_layer, args.rank_hidden))
            ours = measure("lori", store, args)
            runs.append((n, ours))
            # measured peaks: tensorly ~5x the float64 tensor (unfoldings, SVD factors), the tall SVDs ~3x
            x_bytes = n * args.layers * args.hidden * 8
            engine = ("tensorly" if 5.5 * x_bytes <= budget else "svd" if 3.5 * x_bytes <= budget else None)
            cells = [f"{n:.0e}", f"{ours['time_s']:.2f}", f"{ours['rss'] / 2**20:.0f} MiB", f"{ours['error']:.6f}"]
            if n > args.baseline_max_tokens:
                cells += [f"(not run: N > --baseline-max-tokens {args.baseline_max_tokens:.0e})", *"-----"]
            elif engine is None:
                cells += [f"(does not fit: needs ~{3.5 * x_bytes / 2**30:.0f} GiB)", *"-----"]
            else:
                base = measure(engine, store, args)
                cells += [base["engine"], f"{base['time_s']:.2f}", f"{base['rss'] / 2**20:.0f} MiB", f"{base['error']:.6f}",
                          f"{base['time_s'] / ours['time_s']:.1f}x", f"{base['rss'] / ours['rss']:.1f}x"]
                last = (n, base["time_s"] / ours["time_s"], base["rss"] / ours["rss"], base["engine"])
            print("| " + " | ".join(cells) + " |", flush=True)
            shutil.rmtree(store.parent, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    (n0, first), (n1, final) = runs[0], runs[-1]
    flat = f"lori peak RSS {first['rss'] / 2**20:.0f} MiB at N={n0:.0e} -> {final['rss'] / 2**20:.0f} MiB at N={n1:.0e}"
    if last:
        print(f"largest N with both engines = {last[0]:.0e}: speed ratio {last[1]:.1f}x, memory ratio {last[2]:.1f}x "
              f"({last[3]} / lori); {flat}")
    else:
        print(f"no baseline ran; {flat}")


if __name__ == "__main__":
    main()
