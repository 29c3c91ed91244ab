"""Benchmark: the LM head on the prompt block of a latent student's training step.

The student reads only the last prompt position's logits, so ``LatentStudent._think`` asks the
model for ``logits_to_keep=1``. This measures what that saves on a SmolLM2-135M-shaped model
(vocabulary 49,152; random weights, built from config, nothing downloaded): one training step
(forward + backward through K thoughts) with the head on the last position only vs on every
prompt position, alternating step by step in one process.

    python bench/prompt_head.py [--batch-size 8] [--prompt-len 96] [--steps 5] [--threads 2]

The last line prints full-head / last-position time and the logits memory avoided.
"""
from __future__ import annotations

import argparse
import time
from unittest import mock

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lori.model import latent
from lori.model.latent import LatentStudent
from lori.model.sequences import StudentBatch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=96)
    ap.add_argument("--latent-steps", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    student = LatentStudent(model, args.latent_steps, bot_id=1, eot_id=2).train()
    b, p, s = args.batch_size, args.prompt_len, 6
    batch = StudentBatch(prompt_ids=torch.randint(3, 49152, (b, p)), prompt_mask=torch.ones(b, p, dtype=torch.long),
                         suffix_ids=torch.randint(3, 49152, (b, s)), suffix_mask=torch.ones(b, s, dtype=torch.long),
                         answer_start=2, index=torch.arange(b))
    real = latent.forward_cached

    def full_head(model, cache=None, **kwargs):
        kwargs.pop("logits_to_keep", None)      # the head on every position (what HF does by default)
        return real(model, cache, **kwargs)

    def step() -> None:
        student.zero_grad(set_to_none=True)
        student(batch).task_loss.backward()

    times = {"last position": 0.0, "every position": 0.0}
    for i in range(args.steps + 1):
        for label in times:
            with mock.patch.object(latent, "forward_cached", real if label == "last position" else full_head):
                start = time.perf_counter()
                step()
                if i > 0:                         # the first round warms up
                    times[label] += time.perf_counter() - start
    per = {k: v / args.steps for k, v in times.items()}
    logits_mb = b * p * config.vocab_size * 4 / 2**20
    print(f"# prompt-head benchmark: SmolLM2-135M shape, CPU {args.threads} threads, batch {b}, prompt {p}, "
          f"K={args.latent_steps}, {args.steps} timed steps")
    for label, t in per.items():
        print(f"{label:>15} {1000 * t:9.1f} ms/step")
    print(f"RESULT head on every prompt position / last position only = "
          f"{per['every position'] / per['last position']:.2f}x; prompt logits avoided: {logits_mb:.0f} MiB (fp32)")


if __name__ == "__main__":
    main()
