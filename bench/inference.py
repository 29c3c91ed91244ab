"""Benchmark 1: implicit (latent student) vs explicit CoT (teacher) inference.

Uses the trained models of a finished run (default ``results/quickstart``): the teacher
(cot_sft) writes its chain of thought, the LoRi student thinks K latent steps and answers.
Both decode the same problems, greedily, with the same batch size, in the same process.

    python bench/inference.py [--run results/quickstart] [--bench test] [--n 500] [--batch-size 64 1]

The last line prints the speed ratio (explicit wall time / implicit wall time) at the first batch size.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from lori.data import iter_batches, read_records
from lori.generate import generate_cot
from lori.latent import LatentStudent
from lori.models import load_checkpoint, resolve_device
from lori.sequences import student_batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_method(generate, records, batch_size: int, device, repeats: int = 2) -> tuple[float, float]:
    """Best-of-``repeats`` wall seconds per problem, and mean generated tokens per problem."""
    best, tokens = float("inf"), 0.0
    for _ in range(repeats):
        sync(device)
        start, n_tokens = time.perf_counter(), 0
        for batch in iter_batches(records, batch_size):
            n_tokens += sum(g.tokens for g in generate(batch))
        sync(device)
        best = min(best, (time.perf_counter() - start) / len(records))
        tokens = n_tokens / len(records)
    return best, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="results/quickstart")
    ap.add_argument("--student", default="lori")
    ap.add_argument("--bench", default="test")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    run = Path(args.run)
    for p in (run / "teacher", run / "students" / args.student, run / "data" / f"{args.bench}.jsonl"):
        if not p.exists():
            raise SystemExit(f"error: {p} is missing; run the pipeline first (snakemake --cores 2)")
    teacher, tok = load_checkpoint(run / "teacher")
    teacher.to(device).eval()
    student, stok = LatentStudent.load(run / "students" / args.student)
    student.to(device).eval()
    records = read_records(run / "data" / f"{args.bench}.jsonl")[: args.n]

    def explicit(batch):
        return generate_cot(teacher, tok, [r.question for r in batch], args.max_new_tokens, device)

    def implicit(batch):
        return student.generate(student_batch(stok, batch, student.latent_steps).to(device), args.max_new_tokens, stok)

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'cpu'} x{args.threads} threads"
    print(f"# inference benchmark on {name}; {len(records)} problems from {args.run}/{args.bench}")
    print(f"{'batch':>5} {'method':>14} {'ms/problem':>11} {'gen tokens':>11} {'latent':>7}")
    ratios = []
    for bs in args.batch_size:
        t_exp, tok_exp = time_method(explicit, records, bs, device)
        t_imp, tok_imp = time_method(implicit, records, bs, device)
        print(f"{bs:>5} {'explicit CoT':>14} {1000 * t_exp:>11.2f} {tok_exp:>11.1f} {0:>7}")
        print(f"{bs:>5} {'implicit ' + args.student:>14} {1000 * t_imp:>11.2f} {tok_imp:>11.1f} {student.latent_steps:>7}")
        ratios.append((bs, t_exp / t_imp, tok_exp / max(tok_imp, 1e-9)))
    for bs, speed, toks in ratios[1:]:
        print(f"batch {bs}: implicit is {speed:.2f}x faster, {toks:.1f}x fewer generated tokens")
    bs, speed, toks = ratios[0]
    print(f"RESULT implicit vs explicit at batch {bs}: {speed:.2f}x faster (goal >= 3x), {toks:.1f}x fewer generated tokens")


if __name__ == "__main__":
    main()
