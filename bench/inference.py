"""Benchmark 1: implicit (latent student) vs explicit CoT (teacher) inference.

Uses the trained models of a finished run (default ``results/quickstart``): the teacher
(cot_sft) writes its chain of thought, the LoRi student thinks K latent steps and answers.
Both decode the same problems, greedily, with the same batch size, in the same process.

    python bench/inference.py [--run results/quickstart] [--bench test] [--n 500] [--batch-size 64 1]
    python bench/inference.py --scratch quickstart [--cot-tokens 32 --answer-tokens 3] ...

``--scratch`` needs no finished run: one random-weight model (:mod:`scratch`) plays both roles,
and since it never stops by itself the teacher writes exactly ``--cot-tokens`` tokens and the
student ``--answer-tokens`` (the trained quickstart models' means: 31.7 and 2.8).

Beside each speed ratio the bench prints its sequential-step bound: explicit decoding makes one
forward per generated token, implicit one for the prompt, K thoughts, the forced ``<eot> ####``
block, then one per answer token after the first: bound = CoT tokens / (K + 1 + answer tokens).
The bound leaves out the prompt's forward, which both methods run once and which, at a large
batch on a CPU, costs as much as many one-token steps; so the bench also times each method's
prompt forward alone and prints the ratio of the sequential parts (wall time minus prompt
forward) against the same bound: that is the one the step engine (:mod:`lori.model.chain`)
controls. The last line prints the speed ratio (explicit wall time / implicit wall time) at the
first batch size, and the sequential-part ratio.
"""
from __future__ import annotations

import time

import torch
from benchlib import device_name, run_parser, setup, sync
from scratch import SHAPES, scratch_problem

from lori.data.records import BOT, EOT, iter_batches, read_records
from lori.model.chain import prefill
from lori.model.generate import generate_cot
from lori.model.latent import LatentStudent
from lori.model.loading import load_checkpoint
from lori.model.sequences import pad_left, prompt_ids, student_batch


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
    ap = run_parser(__doc__)
    ap.add_argument("--student", default="lori")
    ap.add_argument("--bench", default="test")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--scratch", choices=sorted(SHAPES), help="random weights from a config, no finished run needed")
    ap.add_argument("--cot-tokens", type=int, default=32, help="with --scratch: tokens the teacher writes")
    ap.add_argument("--answer-tokens", type=int, default=3, help="with --scratch: tokens the student writes")
    ap.add_argument("--latent-steps", type=int, default=6, help="with --scratch: K")
    args = ap.parse_args()
    if args.scratch:
        device, _ = setup(args, [])
        problem = scratch_problem(args.scratch, device)
        tok = stok = problem.tokenizer
        teacher = problem.make_model().to(device).eval()
        student = LatentStudent(problem.make_model(), args.latent_steps, tok.convert_tokens_to_ids(BOT),
                                tok.convert_tokens_to_ids(EOT)).to(device).eval()
        records, source = problem.records[: args.n], f"{args.scratch} shape from config"
        cot_tokens, answer_tokens = args.cot_tokens, args.answer_tokens
    else:
        device, run = setup(args, ["teacher", f"students/{args.student}", f"data/{args.bench}.jsonl"])
        teacher, tok = load_checkpoint(run / "teacher")
        teacher.to(device).eval()
        student, stok = LatentStudent.load(run / "students" / args.student)
        student.to(device).eval()
        records, source = read_records(run / "data" / f"{args.bench}.jsonl")[: args.n], f"{args.run}/{args.bench}"
        cot_tokens = answer_tokens = args.max_new_tokens

    def explicit(batch):
        return generate_cot(teacher, tok, [r.question for r in batch], cot_tokens, device)

    def implicit(batch):
        return student.generate(student_batch(stok, batch, student.latent_steps).to(device), answer_tokens, stok)

    # the prompt forward alone, as each method runs it (tokenisation and padding included)
    @torch.no_grad()
    def explicit_prompt(batch):
        ids, mask = pad_left([prompt_ids(tok, r.question) for r in batch], tok.pad_token_id)
        prefill(teacher, ids.to(device), mask.to(device))
        return []

    @torch.no_grad()
    def implicit_prompt(batch):
        sb = student_batch(stok, batch, student.latent_steps).to(device)
        prefill(student.model, sb.prompt_ids, sb.prompt_mask, hidden=True)
        return []

    print(f"# inference benchmark on {device_name(device, args.threads)}; {len(records)} problems from {source}")
    print(f"{'batch':>5} {'method':>14} {'ms/problem':>11} {'gen tokens':>11} {'latent':>7}")
    ratios = []
    for bs in args.batch_size:
        t_exp, tok_exp = time_method(explicit, records, bs, device)
        t_imp, tok_imp = time_method(implicit, records, bs, device)
        p_exp, _ = time_method(explicit_prompt, records, bs, device)
        p_imp, _ = time_method(implicit_prompt, records, bs, device)
        print(f"{bs:>5} {'explicit CoT':>14} {1000 * t_exp:>11.2f} {tok_exp:>11.1f} {0:>7}")
        print(f"{bs:>5} {'implicit ' + args.student:>14} {1000 * t_imp:>11.2f} {tok_imp:>11.1f} {student.latent_steps:>7}")
        bound = tok_exp / (student.latent_steps + 1 + tok_imp)
        print(f"{bs:>5} {'prompt forward':>14} {1000 * p_exp:>11.2f} (explicit) {1000 * p_imp:.2f} (implicit)")
        sequential = (t_exp - p_exp) / max(t_imp - p_imp, 1e-12)
        ratios.append((bs, t_exp / t_imp, tok_exp / max(tok_imp, 1e-9), bound, 1000 * t_imp, sequential))
    for bs, speed, toks, bound, ms, seq in ratios[1:]:
        print(f"batch {bs}: implicit is {speed:.2f}x faster (sequential-step bound {bound:.2f}x, {speed / bound:.0%} of it; "
              f"without the prompt forward {seq:.2f}x, {seq / bound:.0%}), {toks:.1f}x fewer generated tokens; "
              f"implicit latency {ms:.1f} ms/problem")
    bs, speed, toks, bound, _, seq = ratios[0]
    print(f"RESULT implicit vs explicit at batch {bs}: {speed:.2f}x faster, sequential-step bound {bound:.2f}x "
          f"({speed / bound:.0%} of it; goal within 10%); without the prompt forward {seq:.2f}x ({seq / bound:.0%}); "
          f"{toks:.1f}x fewer generated tokens")


if __name__ == "__main__":
    main()
