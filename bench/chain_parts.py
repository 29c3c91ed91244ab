"""Benchmark: two parts of the latent chain's cost, to size what is left to gain.

1. ``autograd node``: what one ``torch.autograd.Function`` apply costs (forward and backward), for an
   identity node with the fused step's signature, against the same chain of no nodes.
2. ``decode step``: one position through every decoder layer without autograd, as decoding runs
   it (the model's own layers, bitwise the plain forward) against the fused step's forward
   (:class:`lori.model.fused_step.FusedLayerStep`, equal within float rounding), at batch 1 and 64.
   Decoding does not use the second: this measures what it would gain.

    python bench/chain_parts.py [--threads 2] [--batch-size 1 64]

Random weights of the quickstart's shape (:mod:`scratch`); no run needed.
"""
from __future__ import annotations

import argparse
import time

import torch
from scratch import SHAPES
from torch.autograd.function import once_differentiable

from lori.model import fused_step
from lori.model.chain import prefill, start_chain


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, gate, link, *unused):
        ctx.save_for_backward(h)
        return h.view_as(h), link.new_empty(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _):
        return (grad, None, None) + (None,) * 6


def node_overhead_us(nodes: int = 16, repeats: int = 200) -> float:
    start_h, gate = torch.randn(32, 128, requires_grad=True), torch.zeros((), requires_grad=True)

    def chain(n: int) -> None:
        h, link = start_h * 1.0, torch.empty(0)
        for _ in range(n):
            h, link = _Identity.apply(h, gate, link, None, None, None, None, None, None)
        h.sum().backward()

    seconds = {}
    for n in (nodes, 0, nodes, 0):              # warm up, then time
        start = time.perf_counter()
        for _ in range(repeats):
            chain(n)
        seconds[n] = time.perf_counter() - start
    return (seconds[nodes] - seconds[0]) / repeats / nodes * 1e6


class _NoSave:
    """``ctx`` for the fused step's forward run outside autograd (nothing is saved)."""

    def save_for_backward(self, *tensors) -> None:
        pass


def decode_step_ms(model, batch: int, steps: int = 10, repeats: int = 20) -> tuple[float, float]:
    ids = torch.randint(0, model.config.vocab_size, (batch, 46))
    mask = torch.ones_like(ids)

    @torch.no_grad()
    def layers() -> tuple[float, torch.Tensor]:
        cache, _, last = prefill(model, ids, mask)
        chain = start_chain(model, cache, mask, mask.sum(1), steps)
        start = time.perf_counter()
        for _ in range(steps):
            last = chain.step(last, hidden=True).hidden
        return time.perf_counter() - start, last

    @torch.no_grad()
    def fused() -> tuple[float, torch.Tensor]:
        cache, _, last = prefill(model, ids, mask)
        chain = start_chain(model, cache, mask, mask.sum(1), steps)       # for its rotary tables
        parts = fused_step.FusedChainLayers(model, cache, mask, steps)
        start = time.perf_counter()
        for n in range(steps):
            cos, sin = fused_step.rotary_tables(chain.cos[:, n], chain.sin[:, n])
            h = last
            for i, w in enumerate(parts.weights):
                h, _ = fused_step.FusedLayerStep._forward(_NoSave(), h, parts.links[i], cos, sin, parts.mask,
                                                          parts.buffers[i], parts.grads[i], w)
            last = model.model.norm(h)
        return time.perf_counter() - start, last

    # the same states (within float rounding), or the timing means nothing
    torch.testing.assert_close(fused()[1], layers()[1], rtol=1e-4, atol=1e-4)
    plain = sum(layers()[0] for _ in range(repeats)) / (repeats * steps)
    fast = sum(fused()[0] for _ in range(repeats)) / (repeats * steps)
    return 1e3 * plain, 1e3 * fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=200, **SHAPES["quickstart"])).eval()
    print(f"# chain parts on CPU, {args.threads} threads, quickstart shape ({model.config.num_hidden_layers} layers)")
    print(f"autograd node (identity Function, forward + backward): {node_overhead_us():.1f} us per apply")
    for batch in args.batch_size:
        plain, fast = decode_step_ms(model, batch)
        print(f"decode step, batch {batch}: model's layers {plain:.3f} ms, fused forward {fast:.3f} ms "
              f"({plain / fast:.2f}x)")
    print(f"RESULT a fused decode step would be {plain / fast:.2f}x faster per position at batch {batch}")


if __name__ == "__main__":
    main()
