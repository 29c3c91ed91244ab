"""Benchmark: building one student training batch (tokenize, pad, tensors), as every step of
No-CoT, LoRi and CODI does, against the row-by-row build measured in the same run.

- ``row by row``: a tokenizer call per text and a tensor write per row (how batches were built
  before :func:`lori.model.sequences.encode_many`);
- ``student_batch``: the prompts, then the answers, each encoded in one tokenizer call, each
  block padded into one tensor.

    python bench/batching.py [--batch-size 32 256] [--batches 50]

Uses generated quickstart problems and their word tokenizer (:mod:`scratch`); no run needed.
The last line prints the ratio at the first batch size.
"""
from __future__ import annotations

import argparse
import random
import time

import torch
from scratch import scratch_problem

from lori.data.records import BOT, EOT, prompt_text
from lori.model.sequences import bos, encode, student_batch


def row_by_row(tok, records, latent_steps: int):
    """The baseline: the same ids and masks as :func:`student_batch`, one call and one write per row."""
    bot = [tok.convert_tokens_to_ids(BOT)] if latent_steps else []
    head = ([tok.convert_tokens_to_ids(EOT)] if latent_steps else []) + encode(tok, " ####")
    prompts = [bos(tok) + encode(tok, prompt_text(r.question)) + bot for r in records]
    suffixes = [head + encode(tok, f" {r.answer}") + [tok.eos_token_id] for r in records]
    out = []
    for seqs, left in ((prompts, True), (suffixes, False)):
        width = max(map(len, seqs))
        ids, mask = torch.full((len(seqs), width), tok.pad_token_id), torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            cols = slice(width - len(s), width) if left else slice(0, len(s))
            ids[i, cols], mask[i, cols] = torch.tensor(s, dtype=torch.long), 1
        out += [ids, mask]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--latent-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    problem = scratch_problem("quickstart", torch.device("cpu"))
    tok, records = problem.tokenizer, problem.records
    rng = random.Random(0)
    print(f"# batch-building benchmark: generated quickstart problems, word tokenizer, K={args.latent_steps}, "
          f"{args.batches} batches per size")
    print(f"{'batch':>6} {'row by row ms':>14} {'student_batch ms':>17} {'speed-up':>9}")
    ratios = []
    for size in args.batch_size:
        batches = [[records[i] for i in rng.sample(range(len(records)), size)] for _ in range(args.batches)]
        want = [row_by_row(tok, b, args.latent_steps) for b in batches[:3]]
        got = [student_batch(tok, b, args.latent_steps) for b in batches[:3]]
        for w, g in zip(want, got):             # the same batches, or the timing means nothing
            assert all(torch.equal(a, b) for a, b in zip(w, (g.prompt_ids, g.prompt_mask, g.suffix_ids, g.suffix_mask)))
        total = {"row": 0.0, "batch": 0.0}
        for b in batches:                       # alternate, so machine noise hits both alike
            for name, build in (("row", row_by_row), ("batch", student_batch)):
                start = time.perf_counter()
                build(tok, b, args.latent_steps)
                total[name] += time.perf_counter() - start
        row, one = (1000 * total[k] / len(batches) for k in ("row", "batch"))
        ratios.append(row / one)
        print(f"{size:>6} {row:>14.2f} {one:>17.2f} {row / one:>8.2f}x")
    print(f"RESULT student_batch is {ratios[0]:.2f}x faster than row by row at batch {args.batch_size[0]}")


if __name__ == "__main__":
    main()
