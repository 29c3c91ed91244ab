"""``lori inspect PATH [--plot FILE] [--plot-examples FILE]``: what is inside an artifact.

- Zarr stores (``hidden/*.zarr``, ``lowrank/factors.zarr``, ``targets/*.zarr``): group attrs,
  then every array with its shape by dimension, dtype, chunks, codecs and attrs. A factors
  store adds its energy-vs-rank table and the per-example diagnostics; a hidden store its
  examples and CoT lengths.
- Directories (checkpoints, ``eval/``, ``report/``): their files; safetensors headers list
  the tensors, JSON files their keys.
- Files: ``.json`` (keys), ``.jsonl`` (rows and fields), ``.safetensors``, ``.npz``
  (factorize partials and states).

A missing or corrupt array is an error naming it. ``--plot`` writes the spectrum figure of a
factors store (energy vs rank per mode), ``--plot-examples`` its effective-rank figure.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lori.analysis.figures import plot_effective_rank, plot_spectrum
from lori.analysis.runs import load_factor_summary
from lori.artifacts import factors, hidden, targets
from lori.artifacts.factor_state import load_npz
from lori.artifacts.store import ArtifactError, open_store, read_array
from lori.cli import USER_ERRORS
from lori.lowrank.maths import energy_curve

# arrays each stage's store must hold, from the store contracts (lori.artifacts); a store
# without a known stage is listed as is
REQUIRED = {contract.STAGE: contract.REQUIRED for contract in (hidden, factors, targets)}
MAX_ATTR_CHARS = 110


def short(value: Any, limit: int = MAX_ATTR_CHARS) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def is_zarr(path: Path) -> bool:
    return path.is_dir() and (path / "zarr.json").exists()


# ---------------------------------------------------------------- zarr stores
def zarr_nodes(path: Path, group) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """``(arrays, groups)`` of a local store, opened one by one so a broken one is named."""
    arrays, groups = [], []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (child / "zarr.json").exists():
            raise ArtifactError(f"{path}: array '{child.name}' has no metadata (zarr.json missing): corrupt store")
        try:
            node = group[child.name]
            _ = node.attrs.asdict()
        except Exception as e:
            raise ArtifactError(f"{path}: array '{child.name}' is unreadable or corrupt ({type(e).__name__}: {e})") from None
        (arrays if hasattr(node, "dtype") else groups).append((child.name, node))
    return arrays, groups


def array_line(name: str, arr) -> list[str]:
    dims = list(arr.attrs.get("_ARRAY_DIMENSIONS") or getattr(arr.metadata, "dimension_names", None) or [])
    shape = " x ".join(f"{d}={n}" for d, n in zip(dims, arr.shape)) if len(dims) == len(arr.shape) else str(arr.shape)
    codecs = ",".join(type(c).__name__.replace("Codec", "").lower() for c in getattr(arr, "compressors", ())) or "raw"
    dtype = "string" if arr.dtype.kind in "TUO" else str(arr.dtype)
    lines = [f"  {name:<16} [{shape}]  {dtype}  chunks {tuple(arr.chunks)}  {codecs}  {_size(arr.nbytes)}"]
    extra = {k: v for k, v in arr.attrs.asdict().items() if k != "_ARRAY_DIMENSIONS"}
    lines += [f"      {k}: {short(v, MAX_ATTR_CHARS - 6)}" for k, v in extra.items()]
    return lines


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def describe_zarr(path: Path, indent: str = "") -> list[str]:
    group = open_store(path)
    attrs = group.attrs.asdict()
    stage = attrs.get("stage")
    if stage in REQUIRED:  # names the first missing or unreadable required array
        open_store(path, REQUIRED[stage], kind=f"{stage} output")
    arrays, groups = zarr_nodes(path, group)
    lines = [f"{path}  (Zarr group{f', stage {stage}' if stage else ''}: {len(arrays)} arrays)", "attrs:"]
    lines += [f"  {k}: {short(v)}" for k, v in attrs.items()] or ["  (none)"]
    lines.append("arrays:")
    for name, arr in arrays:
        lines += array_line(name, arr)
    for name, _ in groups:
        lines += ["", *describe_zarr(path / name)]
    if stage == factors.STAGE:
        lines += ["", *factor_summary(path, group)]
    elif stage == hidden.STAGE or "offsets" in dict(arrays):
        lines += ["", *offsets_summary(path, group)]
    return [indent + line for line in lines]


def energy_table(spec_l: np.ndarray, spec_d: np.ndarray, r_l: int, r_d: int, rows: int = 12) -> list[str]:
    """Cumulative energy per mode at ranks 1, 2, ... (a few beyond the chosen ranks), chosen ranks marked."""
    cl, cd = energy_curve(spec_l), energy_curve(spec_d)
    ranks = sorted({*range(1, min(rows, len(cd)) + 1), r_l, r_d, *[k for k in (16, 32, 64, 128, 256) if k <= len(cd)]})
    out = [f"energy captured vs rank (chosen: layer {r_l}, hidden {r_d}; * = chosen):", "   rank   layer %   hidden %"]
    for k in ranks:
        lay = f"{100 * cl[k - 1]:7.2f}{'*' if k == r_l else ' '}" if k <= len(cl) else " " * 8
        hid = f"{100 * cd[k - 1]:8.2f}{'*' if k == r_d else ' '}"
        out.append(f"  {k:5d}  {lay}  {hid}")
    return out


def factor_summary(path: Path, group) -> list[str]:
    attrs = group.attrs.asdict()
    spec_l, spec_d = read_array(group, "spectrum_layer", path), read_array(group, "spectrum_hidden", path)
    lines = energy_table(spec_l, spec_d, attrs.get("rank_layer", 1), attrs.get("rank_hidden", 1))
    if "energy_joint" in attrs:
        lines.append(f"joint: {100 * attrs['energy_joint']:.2f}% of the energy kept by the "
                     f"{attrs.get('rank_layer')}x{attrs.get('rank_hidden')} core"
                     + (f"; relative error per iteration {short([round(e, 6) for e in attrs['reconstruction_errors']])}"
                        if attrs.get("method") == "hooi" else ""))
    if "effective_rank" in group:
        erank, length = read_array(group, "effective_rank", path), read_array(group, "cot_length", path)
        kept = read_array(group, "energy_captured", path)
        ok = length > 0
        if ok.any():
            q = lambda a: "median {:.2f} (IQR {:.2f}-{:.2f})".format(*np.nanpercentile(a[ok], [50, 25, 75]))  # noqa: E731
            corr = np.corrcoef(length[ok], erank[ok])[0, 1] if ok.sum() > 2 and length[ok].std() > 0 else float("nan")
            lines += [f"per example ({ok.sum()} with CoT tokens of {len(length)}):",
                      f"  CoT length        {q(length.astype(float))}",
                      f"  effective rank    {q(erank)}; correlation with length {corr:.2f}",
                      f"  energy captured   {q(100 * kept)} %"]
    return lines


def offsets_summary(path: Path, group) -> list[str]:
    offsets = read_array(group, "offsets", path)
    lengths = np.diff(offsets)
    if not len(lengths):
        return ["examples: 0"]
    return [f"examples: {len(lengths)}, tokens: {int(offsets[-1])}, per example min {lengths.min()} / "
            f"median {np.median(lengths):.0f} / max {lengths.max()}"]


# ---------------------------------------------------------------- other artifacts
def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes) without loading tensors."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            return json.loads(fh.read(n))
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def describe_file(path: Path) -> list[str]:
    head = f"{path}  ({_size(path.stat().st_size)})"
    if path.suffix == ".safetensors":
        header = safetensors_header(path)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        params = sum(int(np.prod(v["shape"])) for v in tensors.values())
        return [f"{head}: {len(tensors)} tensors, {params:,} parameters",
                *[f"  {k:<48} {v['dtype']:<5} {v['shape']}" for k, v in sorted(tensors.items())[:40]],
                *(["  ..."] if len(tensors) > 40 else [])]
    if path.suffix == ".json":
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        return [head, *[f"  {k}: {short(v)}" for k, v in list(items)[:40]]]
    if path.suffix == ".jsonl":
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        first = json.loads(rows[0]) if rows else {}
        return [f"{head}: {len(rows)} rows", *[f"  {k}: {short(v)}" for k, v in first.items()]]
    if path.suffix == ".npz":
        arrays, meta = load_npz(path, "partial or state")
        return [f"{head}: factorize {meta.get('kind')} of pass {meta.get('step')!r}",
                *[f"  {k}: {short(v)}" for k, v in meta.items()],
                *[f"  {k:<24} {a.dtype}  {a.shape}" for k, a in arrays.items()]]
    return [head]


def describe(path: str | Path) -> str:
    """The text ``lori inspect`` prints for ``path``."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact")
    if is_zarr(path):
        return "\n".join(describe_zarr(path))
    if path.is_dir():
        lines = [f"{path}/  (directory)"]
        for child in sorted(path.iterdir()):
            if is_zarr(child):
                lines.append(f"  {child.name}/  (Zarr store: lori inspect {child})")
            elif child.is_dir():
                lines.append(f"  {child.name}/  ({sum(1 for _ in child.iterdir())} entries)")
            else:
                lines += ["  " + line for line in describe_file(child)]
        return "\n".join(lines)
    return "\n".join(describe_file(path))


def plot(path: str | Path, spectrum_file: str | None, examples_file: str | None) -> None:
    group = open_store(path, kind="factors")
    if group.attrs.get("stage") != factors.STAGE:
        raise ArtifactError(f"{path}: --plot needs a factors store (lowrank/factors.zarr), "
                            f"this one is from stage {group.attrs.get('stage')!r}")
    summary = load_factor_summary(str(path))
    if spectrum_file:
        plot_spectrum(summary, Path(spectrum_file))
    if examples_file:
        if "effective_rank" not in summary:
            raise ArtifactError(f"{path}: no per-example diagnostics (array 'effective_rank'); rerun factorize")
        plot_effective_rank(summary, Path(examples_file))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="lori inspect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="any artifact: a Zarr store, checkpoint or report directory, json/jsonl/npz file")
    ap.add_argument("--plot", metavar="FILE", help="factors store: write the spectrum figure (energy vs rank) to FILE")
    ap.add_argument("--plot-examples", metavar="FILE", help="factors store: write effective rank vs CoT length to FILE")
    args = ap.parse_args(argv)
    try:
        print(describe(args.path))
        if args.plot or args.plot_examples:
            plot(args.path, args.plot, args.plot_examples)
            print("wrote " + ", ".join(f for f in (args.plot, args.plot_examples) if f))
    except USER_ERRORS as e:
        # bad input is the user's to fix: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except BrokenPipeError:  # `lori inspect ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
