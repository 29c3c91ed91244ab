r"""Stage ``prepare_data``: one dataset split -> ``results/<run>/data/<split>.jsonl``.

Reads a dataset spec (``data.train`` or ``data.benchmarks.<name>`` of the config) and writes
normalised records (:class:`lori.data.records.Record`, one JSON per line). One rule instance per
split, so editing one benchmark never invalidates the training data.

Kinds: ``quickstart`` (generated), ``records`` (lori jsonl), the real benchmarks ``gsm8k``,
``gsm8k_aug``, ``gsm_hard``, ``svamp``, ``mult`` (``--path``: a local file as published or a
hub name, :mod:`lori.data.sources`) and ``mult_synth`` (``--n`` generated multiplication problems
whose operand width comes from, and whose pairs are excluded from, ``--path``: a file or the
folder of valid/test files).

Standalone::

    python -m lori.prepare_data --split test --kind quickstart --n 500 \
        --out results/quickstart/data/test.jsonl --exclude results/quickstart/data/train.jsonl
    python -m lori.prepare_data --split gsm_hard --kind gsm_hard \
        --path data/gsm_hard/test.jsonl --out results/smollm2-gsm8k-cpu/data/gsm_hard.jsonl
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Literal, Sequence

from lori.cli import stage_main, stage_summary
from lori.data.generator import generate
from lori.data.records import DataError, read_records, write_records
from lori.data.sources import KINDS as FILE_KINDS
from lori.data.sources import generate_mult, load_dataset

log = logging.getLogger("lori.prepare_data")


@dataclass
class PrepareDataConfig:
    split: str = "train"                 # split name (ids are prefixed with it)
    kind: Literal["quickstart", "records", "gsm8k", "gsm8k_aug", "gsm_hard", "svamp", "mult", "mult_synth"] = "quickstart"
    path: str | None = None              # local file or hub name (mult_synth: files/folder of pairs to exclude)
    n: int | None = None                 # problems to generate / first-n limit for files
    seed: int | None = None              # generator seed; None = derived from global seed + split
    global_seed: int = 0
    min_steps: int = 2                   # quickstart: chained operations per problem
    max_steps: int = 4
    max_value: int = 99                  # quickstart: values stay in [0, max_value]
    wrap: bool = False                   # quickstart: count modulo max_value + 1 (no answer leak through operands)

    def __post_init__(self):
        if self.kind != "quickstart" and not self.path:
            raise ValueError(f"kind '{self.kind}' needs --path")
        if self.kind in ("quickstart", "mult_synth") and not self.n:
            raise ValueError(f"kind '{self.kind}' needs --n (number of problems)")

    @property
    def split_seed(self) -> int:
        return self.seed if self.seed is not None else self.global_seed * 1_000_003 + zlib.crc32(self.split.encode())


def load_split(cfg: PrepareDataConfig, exclude_questions: set[str] | None = None):
    """Records of one split, per its spec."""
    if cfg.kind == "quickstart":
        return generate(cfg.n, cfg.split_seed, cfg.min_steps, cfg.max_steps, cfg.max_value,
                        split=cfg.split, exclude=exclude_questions, wrap=cfg.wrap)
    if cfg.kind == "mult_synth":
        return generate_mult(cfg.n, cfg.split_seed, cfg.path, split=cfg.split)
    if cfg.kind in FILE_KINDS:
        records = load_dataset(cfg.kind, cfg.path, cfg.split, cfg.n)
    else:
        records = read_records(cfg.path)
    if exclude_questions:
        # published benchmarks keep their size; an overlap with training is reported, not hidden
        overlap = sum(r.question in exclude_questions for r in records)
        if overlap:
            log.warning("split '%s': %d of %d questions also occur in the excluded split(s)", cfg.split, overlap,
                        len(records))
    return records[: cfg.n] if cfg.n else records


def run(cfg: PrepareDataConfig, out: str, exclude: Sequence[str] = ()) -> int:
    excluded = {r.question for path in exclude for r in read_records(path)}
    records = load_split(cfg, excluded)
    if not records:
        raise DataError(f"{cfg.path or cfg.kind}: no problems for split '{cfg.split}' (an empty file?)")
    n = write_records(out, records)
    steps = sum(len(r.steps) for r in records) / n
    log.info("wrote %d records to %s (%.2f CoT steps per problem)", n, out, steps)
    return n


def main(argv: Sequence[str] | None = None) -> None:
    cfg, ns = stage_main(PrepareDataConfig, argv, __doc__,
                         [("--out", "output jsonl"), ("--exclude", "(optional) jsonl(s) whose questions are excluded, comma-separated")],
                         "prepare_data")
    n = run(cfg, ns.out, [p for p in (ns.exclude or "").split(",") if p])
    stage_summary(f"prepare_data {cfg.split}", n, "problems", f"{n} problems -> {ns.out}")


if __name__ == "__main__":
    main()
