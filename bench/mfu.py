"""Benchmark 4: distill throughput (tokens/s) and model-FLOPs utilisation on a GPU.

A randomly initialised LLaMA of SmolLM2-135M's shape (30 layers, 576 wide, 9/3 heads, vocab
49152) trains with the LoRi loss (random orthonormal factors, synthetic teacher statistics)
and, for reference, with plain SFT on sequences of the same total length, both in this
process. MFU counts 6·N·tokens (N = parameters incl. the output layer) plus attention
(12·layers·width·seq per token), against the card's dense bf16 peak.

    python bench/mfu.py [--batch-size 64] [--prompt 96] [--latent-steps 6] [--peak-tflops 989]

On a CPU this runs a tiny shape (``--tiny``) only to check that it works.
"""
from __future__ import annotations

import argparse
import time

import torch

from lori.lowrank.maths import Factors
from lori.model.latent import LatentStudent
from lori.model.precision import autocast_context
from lori.model.sequences import StudentBatch
from lori.training.losses import moments, reason_loss

SMOLLM2 = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               intermediate_size=1536, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=96, help="question tokens")
    ap.add_argument("--suffix", type=int, default=8, help="<eot> #### answer tokens")
    ap.add_argument("--latent-steps", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = TINY if args.tiny or device.type == "cpu" else SMOLLM2
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape)).to(device)
    if args.compile:
        model = torch.compile(model)
    n_params = sum(p.numel() for p in model.parameters())
    d, n_layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    student = LatentStudent(model, args.latent_steps, bot_id=1, eot_id=2).to(device)
    layers = list(range(1, n_layers + 1))
    r_l, r_d = min(4, n_layers), min(64, d)
    factors = Factors(torch.linalg.qr(torch.randn(n_layers, r_l))[0], torch.linalg.qr(torch.randn(d, r_d))[0],
                      torch.zeros(n_layers, d), torch.ones(n_layers), layers).to(device)
    b = args.batch_size
    batch = StudentBatch(torch.randint(3, vocab, (b, args.prompt), device=device),
                         torch.ones(b, args.prompt, dtype=torch.long, device=device),
                         torch.randint(3, vocab, (b, args.suffix), device=device),
                         torch.ones(b, args.suffix, dtype=torch.long, device=device), 2, torch.arange(b))
    mean_t, cov_t = torch.randn(b, r_l * r_d, device=device), torch.eye(r_l * r_d, device=device).expand(b, -1, -1)
    seq = args.prompt + args.latent_steps + args.suffix
    sft_ids = torch.randint(3, vocab, (b, seq), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    opt.add_param_group({"params": list(student.projection.parameters())})

    def lori_step():
        with autocast_context(device):
            out = student(batch, layers)
            mean_s, cov_s = moments(factors.project(out.thoughts.float()))
            loss = out.task_loss + reason_loss(mean_s, cov_s, mean_t, cov_t)["reason"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sft_step():
        with autocast_context(device):
            loss = model(input_ids=sft_ids, labels=sft_ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tokens = b * seq
    flops_per_step = (6 * n_params + 12 * n_layers * d * seq) * tokens
    print(f"# MFU benchmark on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}: "
          f"{n_params / 1e6:.1f}M params, batch {b}, {seq} tokens/sequence (prompt {args.prompt} + K "
          f"{args.latent_steps} + suffix {args.suffix}), bf16 autocast, peak {args.peak_tflops} TFLOP/s")
    results = {}
    for label, step in (("SFT", sft_step), ("LoRi", lori_step)):
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        sec = (time.perf_counter() - start) / args.steps
        mfu = flops_per_step / sec / (args.peak_tflops * 1e12)
        results[label] = (sec, tokens / sec, mfu)
        print(f"{label:>5}: {1000 * sec:8.1f} ms/step  {tokens / sec:12.0f} tokens/s  MFU {100 * mfu:5.1f}%")
    print(f"RESULT LoRi distill: {results['LoRi'][1]:.0f} tokens/s, MFU {100 * results['LoRi'][2]:.1f}% "
          f"(goal >= 35%); SFT on the same tokens: MFU {100 * results['SFT'][2]:.1f}%")


if __name__ == "__main__":
    main()
