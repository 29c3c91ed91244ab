r"""Stage ``evaluate``: one method on one benchmark, greedy decoding.

``cot_sft`` is the teacher (writes its CoT); students think in latent steps (or not at all)
and then answer. Writes ``eval/<method>/<bench>.jsonl`` (one line per problem: id,
prediction, parsed, gold, correct, generated_tokens, latent_steps, latency_s) and
``eval/<method>/<bench>.json`` (accuracy with a Wilson 95% CI, mean generated tokens, mean
latency per problem); :mod:`lori.artifacts.evaluation` is the contract of both files.

Thought-shuffle test (``thought_shuffle: true``, latent students only): every problem is
answered a second time with another problem's thoughts in place of its own (a seeded
derangement over the benchmark); rows get ``correct_shuffled`` and the summary a
``thought_shuffle`` block. The accuracy drop measures how much the answers depend on the
thoughts: a student that ignores them loses nothing.

Standalone::

    python -m lori.evaluate --method lori --model results/quickstart/students/lori \
        --data results/quickstart/data/test.jsonl --out results/quickstart/eval/lori/test.jsonl
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import lori
from lori.analysis.stats import wilson_interval
from lori.artifacts import evaluation
from lori.cli import stage_main, stage_summary
from lori.config import config_hash
from lori.data.answers import is_correct
from lori.data.records import iter_batches, read_records
from lori.progress import tqdm  # tqdm that also writes lines into log files

# torch and lori.model are imported in the functions that use them: `--help` must not wait for torch
if TYPE_CHECKING:
    from lori.model.latent import LatentStudent

log = logging.getLogger("lori.evaluate")


@dataclass
class EvaluateConfig:
    method: str = "cot_sft"              # cot_sft (teacher, explicit CoT) or a student method
    bench: str = "test"                  # benchmark name (recorded in the summary)
    batch_size: int = 250                # problems per decoding batch
    max_new_tokens: int = 96             # decoding budget per problem (tokens)
    thought_shuffle: bool = True         # latent students: also answer with another problem's thoughts
    seed: int = 0
    threads: int = 2
    device: str = "auto"


def summarize(rows: list[dict], method: str, bench: str) -> dict:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    lo, hi = wilson_interval(correct, n)
    return {"method": method, "bench": bench, "n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
            "ci_low": lo, "ci_high": hi,
            "generated_tokens": sum(r["generated_tokens"] for r in rows) / max(1, n),
            "latent_steps": sum(r["latent_steps"] for r in rows) / max(1, n),
            "latency_s": sum(r["latency_s"] for r in rows) / max(1, n)}


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation with no fixed point (n >= 2): each problem gets another's thoughts."""
    if n < 2:
        raise ValueError(f"the thought-shuffle test needs at least 2 problems, got {n}")
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    perm = [0] * n
    for i, j in enumerate(order):
        perm[j] = order[(i + 1) % n]     # a cycle through a random order: never i -> i
    return perm


def shuffled_correct(student: LatentStudent, tokenizer, records: list, cfg: EvaluateConfig, device) -> list[bool]:
    """Answers with thoughts taken from other problems; one ``correct`` flag per record."""
    import torch

    from lori.model.sequences import student_batch

    batches = list(iter_batches(records, cfg.batch_size))
    inputs = torch.cat([student.thought_inputs(student_batch(tokenizer, b, student.latent_steps).to(device)).cpu()
                        for b in tqdm(batches, desc="thought-shuffle: thoughts", mininterval=5, disable=None)])
    swapped = inputs[derangement(len(records), cfg.seed)]
    flags, start = [], 0
    for batch in tqdm(batches, desc="thought-shuffle: answers", mininterval=5, disable=None):
        given = swapped[start:start + len(batch)].to(device)
        start += len(batch)
        gens = student.generate(student_batch(tokenizer, batch, student.latent_steps).to(device),
                                cfg.max_new_tokens, tokenizer, thought_inputs=given)
        flags += [is_correct(g.text, r.answer) for r, g in zip(batch, gens)]
    return flags


def run(cfg: EvaluateConfig, model_path: str, data: str, out: str, summary_path: str | None = None) -> dict:
    from lori.model.answer import answer_rows
    from lori.model.latent import LatentStudent
    from lori.model.loading import load_checkpoint, setup_runtime

    device = setup_runtime(cfg.seed, cfg.threads, cfg.device)
    records = read_records(data)
    if cfg.method == "cot_sft":
        model, tokenizer = load_checkpoint(model_path)
        latent = 0
    else:
        model, tokenizer = LatentStudent.load(model_path)
        student, latent = model, model.latent_steps
    model.to(device).eval()
    start = time.perf_counter()
    # the one decoding path of every evaluation (also the training loop's validation)
    rows = answer_rows(model, tokenizer, records, cfg.batch_size, cfg.max_new_tokens, device,
                       desc=f"eval {cfg.method}/{cfg.bench}")
    summary = summarize(rows, cfg.method, cfg.bench)
    summary["wall_s"] = time.perf_counter() - start
    if cfg.method != "cot_sft" and latent > 0 and cfg.thought_shuffle and len(records) >= 2:
        flags = shuffled_correct(student, tokenizer, records, cfg, device)
        for row, flag in zip(rows, flags):
            row["correct_shuffled"] = flag
        k = sum(flags)
        lo, hi = wilson_interval(k, len(flags))
        summary["thought_shuffle"] = {"correct": k, "accuracy": k / len(flags), "ci_low": lo, "ci_high": hi,
                                      "drop": summary["accuracy"] - k / len(flags)}
        log.info("thought-shuffle: %.1f%% with other problems' thoughts (drop %.1f points)",
                 100 * k / len(flags), 100 * summary["thought_shuffle"]["drop"])
    summary.update(config_hash=config_hash(asdict(cfg)), lori_version=lori.__version__)   # provenance
    evaluation.write_rows(out, rows)
    evaluation.write_summary(summary_path or evaluation.summary_path(out), summary)
    log.info("%s on %s: %.1f%% [%.1f, %.1f] (n=%d), %.1f generated tokens, %.2f ms/problem", cfg.method, cfg.bench,
             100 * summary["accuracy"], 100 * summary["ci_low"], 100 * summary["ci_high"], summary["n"],
             summary["generated_tokens"], 1000 * summary["latency_s"])
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    cfg, ns = stage_main(EvaluateConfig, argv, __doc__,
                         [("--model", "teacher (cot_sft) or student checkpoint dir"), ("--data", "benchmark records jsonl"),
                          ("--out", "per-problem jsonl"), ("--summary", "(optional) summary json (default: OUT with .json)")],
                         "evaluate")
    s = run(cfg, ns.model, ns.data, ns.out, ns.summary)
    stage_summary(f"evaluate {cfg.method}/{cfg.bench}", s["n"], "problems",
                  f"accuracy {100 * s['accuracy']:.1f}% [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]")


if __name__ == "__main__":
    main()
