r"""Stage ``targets``: core trajectories and anchors of every training example -> Zarr.

Reads the teacher, ``teacher_cot/train.jsonl`` and ``lowrank/factors.zarr``; reruns the
teacher teacher-forced and projects each trajectory on the fly (full states are never
stored for all examples). Writes ``targets/train.zarr`` (:mod:`lori.artifacts.targets`,
docs/artifacts.md):

- ``core`` float32 ``[token, rank_layer, rank_hidden]`` + ``offsets [example+1]``
- ``anchors_core`` float32 ``[example, anchor, rank_layer, rank_hidden]``
- ``anchors`` float16 ``[example, anchor, layer, hidden]`` (full space, for full-space anchor losses)
- ``example_id [example]``; attrs: layers, factors path and config hash.

Standalone::

    python -m lori.targets --teacher results/quickstart/teacher --records results/quickstart/teacher_cot/train.jsonl \
        --factors results/quickstart/lowrank/factors.zarr --out results/quickstart/targets/train.zarr
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

from lori.artifacts import targets as targets_store
from lori.artifacts.factors import check_factors_fit, load_factors
from lori.artifacts.store import index_summary
from lori.cli import stage_main, stage_summary
from lori.config import config_hash
from lori.data.records import check_training_records, read_records

log = logging.getLogger("lori.targets")


@dataclass
class TargetsConfig:
    batch_size: int = 64
    seed: int = 0
    threads: int = 2
    device: str = "auto"


def run(cfg: TargetsConfig, teacher: str, records_path: str, factors_path: str, out: str) -> dict:
    # here, not at the top: `--help` must not wait for torch
    from lori.model.loading import load_checkpoint, setup_runtime
    from lori.model.trajectory import teacher_sequences, teacher_states

    device = setup_runtime(cfg.seed, cfg.threads, cfg.device)
    factors, fattrs = load_factors(factors_path)
    model, tokenizer = load_checkpoint(teacher)
    model.to(device).eval()
    layers = factors.layers
    check_factors_fit(factors, factors_path, model.config, teacher)
    records = read_records(records_path)
    check_training_records(records, records_path, need_cot=False)
    attrs = {"stage": targets_store.STAGE, "config_hash": config_hash(asdict(cfg)), "model": str(teacher),
             "factors": str(factors_path), "factors_config_hash": fattrs.get("config_hash"),
             "rank_layer": factors.ranks[0], "rank_hidden": factors.ranks[1], "split": "train"}
    sequences, offsets = teacher_sequences(tokenizer, records)
    ids = [r.id for r in records]
    with targets_store.create(out, offsets, ids, layers, model.config.hidden_size, factors.ranks, attrs) as writer:
        on_device = factors.to(device)
        for first, states, anchors in teacher_states(model, tokenizer, sequences, layers, cfg.batch_size, device):
            writer.write(first, on_device.project(states).cpu().numpy(), on_device.project(anchors).cpu().numpy(),
                         anchors.cpu().numpy())
    info = index_summary(offsets)
    log.info("targets for %d examples, %d CoT tokens, core %s -> %s", info["examples"], info["tokens"], factors.ranks, out)
    return info


def main(argv: Sequence[str] | None = None) -> None:
    cfg, ns = stage_main(TargetsConfig, argv, __doc__,
                         [("--teacher", "teacher checkpoint dir"), ("--records", "teacher_cot records jsonl"),
                          ("--factors", "factors Zarr store"), ("--out", "output targets Zarr store")], "targets")
    info = run(cfg, ns.teacher, ns.records, ns.factors, ns.out)
    stage_summary("targets", info["tokens"], "tokens", f"{info['examples']} examples")


if __name__ == "__main__":
    main()
