"""Stage ``dump_hidden``: full-resolution teacher states of a calibration set -> Zarr.

Reads the teacher checkpoint and ``teacher_cot/train.jsonl`` (the first
``--calibration-size`` examples); writes ``hidden/calib.zarr`` (DESIGN.md §5):

- ``states``  float16 ``[token, layer, hidden]`` — CoT-token states, examples concatenated
- ``offsets`` int64 ``[example+1]`` — example i owns ``states[offsets[i]:offsets[i+1]]``
- ``anchors`` float16 ``[example, anchor, layer, hidden]`` — ``answer_start`` states
- ``example_id`` ``[example]``; group attrs: layers, model, config hash, stage.

Memory is one batch of hidden states; the store's size is estimated (and checked against the
free disk) before anything is written.

Standalone::

    python -m lori.dump_hidden --teacher results/quickstart/teacher \
        --records results/quickstart/teacher_cot/train.jsonl --out results/quickstart/hidden/calib.zarr

Sharded (what the Snakemake scatter/gather rules run when ``--shards N`` > 1): each shard is a
contiguous run of whole batches of the calibration set, dumped to its own store of the same
layout; ``gather`` checks that the N shard stores are complete, current and of this config, and
concatenates them, streamed, into the store above — equal, bitwise on CPU, to an unsharded dump::

    python -m lori.dump_hidden partial --teacher T --records R --shard I --shards N --out PART_I.zarr
    python -m lori.dump_hidden gather --teacher T --records R --parts PART_0.zarr,... --shards N --out H.zarr

Under ``torchrun --nproc_per_node W`` (``gpus: W`` in the workflow) every rank dumps its share of
whole batches (of the calibration set, or of its shard) to ``.<out>.rank<r>-of-<W>``; rank 0
concatenates them into ``--out`` the same way and removes them.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import lori
from lori.config import ConfigError, config_hash
from lori.data.records import Record, check_training_records, read_records
from lori.artifacts.store import ArtifactError, atomic_path, open_store, read_array, zarr_put
from lori.model.trajectory import ANCHOR_POSITIONS, check_disk_space, create_anchors, create_states

log = logging.getLogger("lori.dump_hidden")

HIDDEN_ARRAYS = ("states", "offsets", "anchors", "example_id")
SHARD_ATTRS = ("shard", "num_shards", "example_range", "inputs")   # on shard stores only


@dataclass
class DumpHiddenConfig:
    calibration_size: int = 1000         # examples dumped (first N)
    layers: str | list[int] = "all"      # all | every_k:<k> | [indices into hidden_states]
    batch_size: int = 64
    shards: int = 1                      # contiguous runs of whole batches dumped by separate jobs, then gathered
    seed: int = 0
    threads: int = 2
    device: str = "auto"

    def __post_init__(self):
        problems = [f"{name} must be >= 1, got {getattr(self, name)}"
                    for name in ("calibration_size", "batch_size", "shards") if getattr(self, name) < 1]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def hash(self) -> str:
        """Config hash of the dump; shard and thread counts are left out (they do not change the store)."""
        values = asdict(self)
        del values["shards"], values["threads"]
        return config_hash(values)


# ---------------------------------------------------------------- which examples
def batch_range(n: int, batch_size: int, parts: int, index: int, lo: int = 0) -> tuple[int, int]:
    """Examples ``[a, b)`` of part ``index`` of ``parts`` over examples ``[lo, lo + n)``.

    Parts are contiguous runs of whole batches (sizes differ by at most one batch; a part may
    be empty), so every part sees exactly the batches an unsharded dump sees and writes
    bitwise the same states (padding and matmul shapes are those of the unsharded batches).
    """
    batches = -(-n // batch_size)
    b0, b1 = index * batches // parts, (index + 1) * batches // parts
    return lo + min(n, b0 * batch_size), lo + min(n, b1 * batch_size)


def calibration_records(cfg: DumpHiddenConfig, records_path: str) -> list[Record]:
    records = read_records(records_path)[: cfg.calibration_size]
    check_training_records(records, records_path)   # no CoT tokens = nothing to factorize
    return records


def inputs_id(teacher: str, records_path: str) -> str:
    """Identity (names, sizes, mtimes) of the dump's inputs: shard stores of other inputs are stale."""
    from lori.training.loop import fingerprint

    return fingerprint(str(teacher), str(records_path))


def base_attrs(cfg: DumpHiddenConfig, teacher: str, records_path: str) -> dict:
    return {"stage": "dump_hidden", "model": str(teacher), "config_hash": cfg.hash, "split": "calib",
            "records": str(records_path)}


# ---------------------------------------------------------------- dumping
def dump_examples(cfg: DumpHiddenConfig, teacher: str, records_path: str, records: list[Record], lo: int, hi: int,
                  out: str, extra_attrs: dict | None = None) -> dict:
    """Dump examples ``records[lo:hi]`` to ``out`` (one process, or every rank of a torchrun job)."""
    from lori.training.distributed import barrier, cleanup, init_distributed
    from lori.lowrank.maths import select_layers
    from lori.model.loading import load_checkpoint, setup_runtime
    from lori.model.trajectory import write_trajectories

    device = setup_runtime(cfg.seed, cfg.threads, cfg.device)
    info, device = init_distributed(device)
    model, tokenizer = load_checkpoint(teacher)
    model.to(device).eval()
    layers = select_layers(cfg.layers, model.config.num_hidden_layers)
    attrs = {**base_attrs(cfg, teacher, records_path), **(extra_attrs or {})}
    if not info.enabled:
        return write_trajectories(out, model, tokenizer, records[lo:hi], layers, cfg.batch_size, device, attrs)
    a, b = batch_range(hi - lo, cfg.batch_size, info.world_size, info.rank, lo)
    parts = [rank_part(out, r, info.world_size) for r in range(info.world_size)]
    write_trajectories(parts[info.rank], model, tokenizer, records[a:b], layers, cfg.batch_size, device,
                       {**attrs, "rank": info.rank, "example_range": [a, b]})
    barrier(info)
    result = {}
    try:
        if info.is_main:
            result = concatenate(parts, out, attrs, records[lo:hi])
    finally:
        barrier(info)
        if info.is_main:
            for p in parts:
                _remove_tree(p)
        cleanup(info)
    return result


def rank_part(out: str | Path, rank: int, world: int) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.rank{rank}-of-{world}")


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def run(cfg: DumpHiddenConfig, teacher: str, records_path: str, out: str) -> dict:
    """The whole calibration set in one job."""
    records = calibration_records(cfg, records_path)
    info = dump_examples(cfg, teacher, records_path, records, 0, len(records), out)
    if info:
        log.info("dumped %d examples, %d CoT tokens (%.1f per example) -> %s",
                 info["examples"], info["tokens"], info["mean_cot_tokens"], out)
    return info


def run_partial(cfg: DumpHiddenConfig, teacher: str, records_path: str, shard: int, out: str) -> dict:
    """Shard ``shard`` of ``cfg.shards``: a store of the same layout for its run of whole batches."""
    if not 0 <= shard < cfg.shards:
        raise ConfigError(f"dump_hidden: --shard {shard} out of range 0..{cfg.shards - 1} (--shards {cfg.shards})")
    records = calibration_records(cfg, records_path)
    lo, hi = batch_range(len(records), cfg.batch_size, cfg.shards, shard)
    extra = {"shard": shard, "num_shards": cfg.shards, "example_range": [lo, hi],
             "inputs": inputs_id(teacher, records_path)}
    info = dump_examples(cfg, teacher, records_path, records, lo, hi, out, extra)
    if info:    # under torchrun only rank 0 has written the store
        log.info("shard %d/%d: examples %d..%d -> %s", shard, cfg.shards, lo, hi, out)
    return info


# ---------------------------------------------------------------- gathering
def run_gather(cfg: DumpHiddenConfig, teacher: str, records_path: str, part_paths: Sequence[str], out: str) -> dict:
    """Check the shard stores against this config and the current inputs, then concatenate them."""
    records = calibration_records(cfg, records_path)
    want = {"num_shards": cfg.shards, "config_hash": cfg.hash, "inputs": inputs_id(teacher, records_path)}
    by_shard: dict[int, str] = {}
    for path in part_paths:
        attrs = dict(open_store(path, HIDDEN_ARRAYS, kind="dump_hidden shard").attrs)
        if "shard" not in attrs:
            raise ArtifactError(f"{path}: not a dump_hidden shard store (no 'shard' attribute)")
        if attrs.get("num_shards") != cfg.shards or attrs.get("config_hash") != cfg.hash:
            raise ArtifactError(f"{path}: shard of {attrs.get('num_shards')} shards, config {attrs.get('config_hash')}; "
                                f"expected {cfg.shards} shards, config {cfg.hash} (rerun dump_hidden partial)")
        if attrs.get("inputs") != want["inputs"]:
            raise ArtifactError(f"{path}: dumped from another teacher or records file than {teacher} + "
                                f"{records_path} as they are now: stale (rerun dump_hidden partial)")
        lo, hi = batch_range(len(records), cfg.batch_size, cfg.shards, attrs["shard"])
        if list(attrs.get("example_range", [])) != [lo, hi]:
            raise ArtifactError(f"{path}: shard {attrs['shard']} holds examples {attrs.get('example_range')}, "
                                f"expected [{lo}, {hi}) of {len(records)}: stale (rerun dump_hidden partial)")
        if attrs["shard"] in by_shard:
            raise ArtifactError(f"dump_hidden gather: shard {attrs['shard']} given twice ({by_shard[attrs['shard']]}, {path})")
        by_shard[attrs["shard"]] = path
    missing = sorted(set(range(cfg.shards)) - set(by_shard))
    if missing:
        raise ArtifactError(f"dump_hidden gather: need shards 0..{cfg.shards - 1} once each, missing {missing}")
    attrs = base_attrs(cfg, teacher, records_path)
    info = concatenate([by_shard[i] for i in range(cfg.shards)], out, attrs, records)
    log.info("gathered %d shards: %d examples, %d CoT tokens -> %s", cfg.shards, info["examples"], info["tokens"], out)
    return info


def concatenate(part_paths: Sequence[str | Path], out: str | Path, attrs: dict, records: list[Record]) -> dict:
    """Concatenate hidden stores (in order) into one store of the contract layout, streamed.

    The parts must hold ``records`` in order (checked by example id) with the same layers;
    the result has the layout, chunking and attrs of a one-process dump of ``records``.
    """
    import zarr

    parts = [open_store(p, HIDDEN_ARRAYS, kind="hidden") for p in part_paths]
    ids = [str(i) for g, p in zip(parts, part_paths) for i in read_array(g, "example_id", p)]
    if ids != [r.id for r in records]:
        raise ArtifactError(f"{out}: the parts hold {len(ids)} examples that are not the {len(records)} "
                            f"calibration records in order (stale or mismatched parts: {', '.join(map(str, part_paths))})")
    layers = [list(g.attrs.get("layers") or []) for g in parts]
    shapes = {tuple(g["states"].shape[1:]) for g in parts}
    if len(shapes) != 1 or any(l != layers[0] for l in layers):
        raise ArtifactError(f"{out}: parts of different layers / hidden sizes ({sorted(shapes)}, layers {layers})")
    (n_layers, hidden), = shapes
    offsets = [read_array(g, "offsets", p) for g, p in zip(parts, part_paths)]
    tokens = int(sum(o[-1] for o in offsets))
    check_disk_space(out, (tokens + len(records)) * n_layers * hidden * 2)
    with atomic_path(out) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        group.attrs.update({**attrs, "layers": layers[0], "anchor_positions": ANCHOR_POSITIONS,
                            "lori_version": lori.__version__, "examples": len(records), "tokens": tokens})
        starts = np.cumsum([0] + [int(o[-1]) for o in offsets])
        zarr_put(group, "offsets", np.concatenate([[0]] + [o[1:] + s for o, s in zip(offsets, starts)]).astype(np.int64),
                 ["example_plus_one"])
        zarr_put(group, "example_id", np.array(ids, dtype=str), ["example"])
        states = create_states(group, tokens, n_layers, hidden)
        anchors = create_anchors(group, len(records), n_layers, hidden)
        ex = 0
        for g, p, start in zip(parts, part_paths, starts):
            _copy_rows(g["anchors"], anchors, ex, p, "anchors")
            _copy_rows(g["states"], states, int(start), p, "states")
            ex += g["anchors"].shape[0]
    return {"examples": len(records), "tokens": tokens,
            "mean_cot_tokens": tokens / len(records) if records else 0.0}


def _copy_rows(src, dst, start: int, path, name: str) -> None:
    """``dst[start:start+len(src)] = src``, one stored chunk of ``dst`` at a time (bounded memory)."""
    step = dst.chunks[0]
    for a in range(0, src.shape[0], step):
        b = min(src.shape[0], a + step)
        try:
            block = np.asarray(src[a:b])
        except Exception as e:  # zarr raises several types for a damaged chunk
            raise ArtifactError(f"{path}: array '{name}' unreadable at rows {a}..{b} ({type(e).__name__}: {e})") from None
        dst[start + a : start + b] = block


# ---------------------------------------------------------------- CLI
PATHS = {
    "run": [("--teacher", "teacher checkpoint dir"), ("--records", "teacher_cot records jsonl"),
            ("--out", "output Zarr store")],
    "partial": [("--teacher", "teacher checkpoint dir"), ("--records", "teacher_cot records jsonl"),
                ("--shard", "shard index, 0..shards-1"), ("--out", "output shard Zarr store")],
    "gather": [("--teacher", "teacher checkpoint dir (checked against the shards)"),
               ("--records", "teacher_cot records jsonl (checked against the shards)"),
               ("--parts", "the shard Zarr stores, comma-separated"), ("--out", "output Zarr store")],
}


def main(argv: Sequence[str] | None = None) -> None:
    from lori.cli import runtime_of, stage_main, stage_summary

    def section(config, ns):
        return {**config["dump_hidden"], **runtime_of(config)}

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("partial", "gather") else "run"
    cfg, ns = stage_main(DumpHiddenConfig, argv, __doc__, PATHS[command], section)
    if command == "run":
        info = run(cfg, ns.teacher, ns.records, ns.out)
        if info:    # under torchrun only rank 0 wrote the store and reports
            stage_summary("dump_hidden", info["tokens"], "tokens", f"{info['examples']} examples")
    elif command == "partial":
        if not ns.shard.isdigit():
            raise ConfigError(f"dump_hidden partial: --shard must be an integer, got {ns.shard!r}")
        run_partial(cfg, ns.teacher, ns.records, int(ns.shard), ns.out)
        stage_summary(f"dump_hidden partial {ns.shard}")
    else:
        run_gather(cfg, ns.teacher, ns.records, [p for p in ns.parts.split(",") if p], ns.out)
        stage_summary("dump_hidden gather")


if __name__ == "__main__":
    main()
