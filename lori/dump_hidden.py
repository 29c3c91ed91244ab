"""Stage ``dump_hidden``: full-resolution teacher states of a calibration set -> Zarr.

Reads the teacher checkpoint and ``teacher_cot/train.jsonl`` (the first
``--calibration-size`` examples); writes ``hidden/calib.zarr`` (DESIGN.md §5):

- ``states``  float16 ``[token, layer, hidden]`` — CoT-token states, examples concatenated
- ``offsets`` int64 ``[example+1]`` — example i owns ``states[offsets[i]:offsets[i+1]]``
- ``anchors`` float16 ``[example, anchor, layer, hidden]`` — ``answer_start`` states
- ``example_id`` ``[example]``; group attrs: layers, model, config hash, stage.

Standalone::

    python -m lori.dump_hidden --teacher results/quickstart/teacher \
        --records results/quickstart/teacher_cot/train.jsonl --out results/quickstart/hidden/calib.zarr
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

from lori.config import config_hash
from lori.data import check_training_records, read_records
from lori.lowrank import select_layers
from lori.models import load_checkpoint, setup_runtime
from lori.trajectory import write_trajectories

log = logging.getLogger("lori.dump_hidden")


@dataclass
class DumpHiddenConfig:
    calibration_size: int = 1000         # examples dumped (first N)
    layers: str | list[int] = "all"      # all | every_k:<k> | [indices into hidden_states]
    batch_size: int = 64
    seed: int = 0
    threads: int = 2
    device: str = "auto"

    def __post_init__(self):
        if self.calibration_size < 1:
            raise ValueError(f"calibration_size must be >= 1, got {self.calibration_size}")


def run(cfg: DumpHiddenConfig, teacher: str, records_path: str, out: str) -> dict:
    device = setup_runtime(cfg.seed, cfg.threads, cfg.device)
    model, tokenizer = load_checkpoint(teacher)
    model.to(device).eval()
    records = read_records(records_path)[: cfg.calibration_size]
    check_training_records(records, records_path)   # no CoT tokens = nothing to factorize
    layers = select_layers(cfg.layers, model.config.num_hidden_layers)
    attrs = {"stage": "dump_hidden", "model": str(teacher), "config_hash": config_hash(asdict(cfg)),
             "split": "calib", "records": str(records_path)}
    info = write_trajectories(out, model, tokenizer, records, layers, cfg.batch_size, device, attrs)
    log.info("dumped %d examples, %d CoT tokens (%.1f per example), layers %s -> %s",
             info["examples"], info["tokens"], info["mean_cot_tokens"], layers, out)
    return info


def main(argv: Sequence[str] | None = None) -> None:
    from lori.cli import runtime_of, stage_main, stage_summary

    def section(config, ns):
        return {**config["dump_hidden"], **runtime_of(config)}

    cfg, ns = stage_main(DumpHiddenConfig, argv, __doc__,
                         [("--teacher", "teacher checkpoint dir"), ("--records", "teacher_cot records jsonl"),
                          ("--out", "output Zarr store")], section)
    info = run(cfg, ns.teacher, ns.records, ns.out)
    stage_summary("dump_hidden", info["tokens"], "tokens", f"{info['examples']} examples")


if __name__ == "__main__":
    main()
