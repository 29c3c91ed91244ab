"""Benchmark 2: ``dump_hidden`` vs a bare forward pass over the same batches.

The bare pass runs the teacher teacher-forced on the same padded batches and keeps nothing;
the dump also gathers the CoT-token states of every layer and writes them to Zarr (float16,
uncompressed). Both run in this process, alternating, best of ``--repeats``.

    python bench/dump.py [--run results/quickstart] [--n 1000] [--batch-size 64]

The last line prints dump time / bare forward time (goal <= 1.3x).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
from benchlib import device_name, run_parser, setup, sync

from lori.data.records import iter_batches, read_records
from lori.dump_hidden import dump_trajectories as write_trajectories
from lori.lowrank.maths import select_layers
from lori.model.loading import load_checkpoint
from lori.model.sequences import teacher_batch, teacher_sequence


def main() -> None:
    ap = run_parser(__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device, run = setup(args, ["teacher", "teacher_cot/train.jsonl"])
    model, tok = load_checkpoint(run / "teacher")
    model.to(device).eval()
    records = read_records(run / "teacher_cot/train.jsonl")[: args.n]
    layers = select_layers("all", model.config.num_hidden_layers)

    @torch.no_grad()
    def bare():
        for batch in iter_batches(records, args.batch_size):
            inputs = teacher_batch(tok, [teacher_sequence(tok, r) for r in batch])
            model(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device))
        sync(device)

    tmp = Path(tempfile.mkdtemp())

    def dump():
        write_trajectories(tmp / "calib.zarr", model, tok, records, layers, args.batch_size, device, {"stage": "bench"})
        sync(device)

    times = {"bare forward": [], "dump_hidden": []}
    for _ in range(args.repeats):
        for label, fn in (("bare forward", bare), ("dump_hidden", dump)):
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    size_mb = sum(f.stat().st_size for f in (tmp / "calib.zarr").rglob("*") if f.is_file()) / 2**20
    shutil.rmtree(tmp)
    print(f"# dump benchmark on {device_name(device, args.threads)}; {len(records)} examples, batch {args.batch_size}, layers {layers}, store {size_mb:.1f} MiB")
    for label, ts in times.items():
        print(f"{label:>13} best {min(ts):.3f} s  (runs: {', '.join(f'{t:.3f}' for t in ts)})")
    ratio = min(times["dump_hidden"]) / min(times["bare forward"])
    print(f"RESULT dump_hidden / bare forward = {ratio:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
