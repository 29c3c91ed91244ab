"""Stage ``teacher_cot``: the teacher writes rationales for the training questions.

Greedy decoding (batched, KV cache). A rationale is kept when the teacher's answer is
correct; otherwise the dataset rationale is used (``--fallback dataset``) or the example is
dropped (``--fallback drop``). Writes ``teacher_cot/train.jsonl`` (records whose ``steps``
are the rationale the teacher is read on, ``meta.rationale`` = teacher | dataset) and
``teacher_cot/summary.json`` (keep rate).

Standalone::

    python -m lori.teacher_cot --teacher results/quickstart/teacher \
        --train results/quickstart/data/train.jsonl --out results/quickstart/teacher_cot/train.jsonl \
        --summary results/quickstart/teacher_cot/summary.json
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from tqdm import tqdm

from lori.answers import extract, is_correct
from lori.data import ANSWER_SEP, Record, iter_batches, read_records, split_steps, write_records
from lori.generate import generate_cot
from lori.io import write_json
from lori.models import load_checkpoint, setup_runtime

log = logging.getLogger("lori.teacher_cot")


@dataclass
class TeacherCoTConfig:
    batch_size: int = 256                # questions per decoding batch
    max_new_tokens: int = 96             # generation budget per question (tokens)
    fallback: Literal["dataset", "drop"] = "dataset"
    seed: int = 0
    threads: int = 2
    device: str = "auto"

    def __post_init__(self):
        if self.fallback not in ("dataset", "drop"):
            raise ValueError(f"fallback must be dataset | drop, got {self.fallback!r}")


def rationale_steps(generated: str) -> list[str]:
    """The CoT part of a generated continuation (text before ``####``), as steps."""
    return split_steps(generated.split(ANSWER_SEP, 1)[0])


def filter_rationales(records: list[Record], generations: list[str], fallback: str) -> tuple[list[Record], dict]:
    """Keep the teacher's rationale where its answer is right; apply ``fallback`` elsewhere."""
    kept, out = 0, []
    for record, text in zip(records, generations):
        steps = rationale_steps(text)
        if ANSWER_SEP in text and is_correct(text, record.answer) and steps:
            kept += 1
            out.append(replace(record, steps=steps, meta={**record.meta, "rationale": "teacher"}))
        elif fallback == "dataset":
            out.append(replace(record, meta={**record.meta, "rationale": "dataset",
                                             "teacher_answer": extract(text)}))
    summary = {"problems": len(records), "teacher_correct": kept, "keep_rate": kept / max(1, len(records)),
               "written": len(out), "fallback": fallback}
    return out, summary


def run(cfg: TeacherCoTConfig, teacher: str, train: str, out: str, summary_path: str) -> dict:
    device = setup_runtime(cfg.seed, cfg.threads, cfg.device)
    model, tokenizer = load_checkpoint(teacher)
    model.to(device).eval()
    records = read_records(train)
    texts = []
    for batch in tqdm(list(iter_batches(records, cfg.batch_size)), desc="teacher_cot", mininterval=5, disable=None):
        texts += [g.text for g in generate_cot(model, tokenizer, [r.question for r in batch], cfg.max_new_tokens, device)]
    kept, summary = filter_rationales(records, texts, cfg.fallback)
    if not kept:
        raise ValueError("teacher_cot: no examples left (teacher never correct and fallback=drop)")
    write_records(out, kept)
    write_json(summary_path, summary)
    log.info("teacher correct on %d/%d training problems (keep rate %.1f%%); wrote %d records",
             summary["teacher_correct"], summary["problems"], 100 * summary["keep_rate"], summary["written"])
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    from lori.cli import stage_main

    def section(config, ns):
        return {**config["teacher_cot"], "seed": config["seed"], "threads": config["threads"], "device": config["device"]}

    cfg, ns = stage_main(TeacherCoTConfig, argv, __doc__,
                         [("--teacher", "teacher checkpoint dir"), ("--train", "training records jsonl"),
                          ("--out", "output records jsonl"), ("--summary", "output summary json")], section)
    run(cfg, ns.teacher, ns.train, ns.out, ns.summary)


if __name__ == "__main__":
    main()
