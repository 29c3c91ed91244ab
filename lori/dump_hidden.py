r"""Stage ``dump_hidden``: full-resolution teacher states of a calibration set -> Zarr.

Reads the teacher checkpoint and ``teacher_cot/train.jsonl`` (the first
``--calibration-size`` examples); writes ``hidden/calib.zarr``, the hidden store
(:mod:`lori.artifacts.hidden`, docs/artifacts.md):

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
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from lori.artifacts import hidden
from lori.artifacts.store import ArtifactError, index_summary
from lori.cli import stage_main, stage_summary
from lori.config import ConfigError, config_hash
from lori.data.records import Record, check_training_records, read_records
from lori.lowrank.maths import select_layers

# lori.model and lori.training (torch) are imported in the functions that use them: `--help` must
# not wait for torch

log = logging.getLogger("lori.dump_hidden")


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
    """The store's provenance attrs (:data:`lori.artifacts.hidden.PROVENANCE_ATTRS`)."""
    return {"stage": hidden.STAGE, "model": str(teacher), "config_hash": cfg.hash, "split": "calib",
            "records": str(records_path)}


# ---------------------------------------------------------------- dumping
def dump_trajectories(out: str | Path, model, tokenizer, records: list[Record], layers: list[int], batch_size: int,
                      device, attrs: dict) -> dict:
    """Stream the teacher's trajectories of ``records`` into a hidden store at ``out``."""
    from lori.model.trajectory import teacher_sequences, teacher_states

    sequences, offsets = teacher_sequences(tokenizer, records)
    with hidden.create(out, offsets, [r.id for r in records], layers, model.config.hidden_size, attrs) as writer:
        for first, states, anchors in teacher_states(model, tokenizer, sequences, layers, batch_size, device):
            writer.write(first, states.cpu().numpy(), anchors.cpu().numpy())
    return index_summary(offsets)


def dump_examples(cfg: DumpHiddenConfig, teacher: str, records_path: str, records: list[Record], lo: int, hi: int,
                  out: str, extra_attrs: dict | None = None) -> dict:
    """Dump examples ``records[lo:hi]`` to ``out`` (one process, or every rank of a torchrun job)."""
    from lori.model.loading import load_checkpoint, setup_runtime
    from lori.training.distributed import barrier, cleanup, init_distributed

    device = setup_runtime(cfg.seed, cfg.threads, cfg.device)
    info, device = init_distributed(device)
    model, tokenizer = load_checkpoint(teacher)
    model.to(device).eval()
    layers = select_layers(cfg.layers, model.config.num_hidden_layers)
    attrs = {**base_attrs(cfg, teacher, records_path), **(extra_attrs or {})}
    if not info.enabled:
        return dump_trajectories(out, model, tokenizer, records[lo:hi], layers, cfg.batch_size, device, attrs)
    a, b = batch_range(hi - lo, cfg.batch_size, info.world_size, info.rank, lo)
    parts = [rank_part(out, r, info.world_size) for r in range(info.world_size)]
    dump_trajectories(parts[info.rank], model, tokenizer, records[a:b], layers, cfg.batch_size, device,
                      {**attrs, "rank": info.rank, "example_range": [a, b]})
    barrier(info)
    result = {}
    try:
        if info.is_main:
            result = hidden.concatenate(parts, out, attrs, [r.id for r in records[lo:hi]])
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
    extra = {"shard": shard, "num_shards": cfg.shards, "example_range": [lo, hi],   # hidden.SHARD_ATTRS
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
        attrs = hidden.read_shard_attrs(path)
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
    info = hidden.concatenate([by_shard[i] for i in range(cfg.shards)], out, attrs, [r.id for r in records])
    log.info("gathered %d shards: %d examples, %d CoT tokens -> %s", cfg.shards, info["examples"], info["tokens"], out)
    return info


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
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("partial", "gather") else "run"
    cfg, ns = stage_main(DumpHiddenConfig, argv, __doc__, PATHS[command], "dump_hidden")
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
