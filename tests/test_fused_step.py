"""The hand-written one-position decoder-layer step (lori.model.fused_step).

Its backward is checked against finite differences (``gradcheck``, float64) on a two-step chain
with grouped-query heads, a q|k|v bias, a left-padded prompt and gradients reaching the prompt's
keys/values and the weights through :class:`LayerGate`; its forward against the model's own decoder layer.
Where it runs inside a training chain, tests/test_chain.py compares losses and gradients with the
plain Hugging Face path.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lori.model.chain import _cache_keyword, _LlamaChain, prefill, start_chain
from lori.model.fused_step import (
    ChainEnd,
    FusedLayerStep,
    KeyValueBuffers,
    LayerGate,
    LayerWeights,
    StepGradients,
    fusable,
    rotary_tables,
)


def tiny_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 24, "vocab_size": 40, "max_position_embeddings": 64, **overrides}
    return LlamaForCausalLM(LlamaConfig(**config))


def two_steps(w: LayerWeights, h, prompt_keys, prompt_values, mask, cos, sin, params):
    """Two positions through one layer after a prompt; returns everything a loss could read."""
    grads, buffers = StepGradients(), KeyValueBuffers(prompt_keys, prompt_values, 2)
    gate = LayerGate.apply(prompt_keys, prompt_values, *params, grads)
    fixed = dataclasses.replace(w, **dict(zip(("input_norm", "qkv", "qkv_bias", "out", "post_norm", "gate_up", "down"),
                                              (p.detach() for p in params))))
    full_mask = torch.cat([mask, mask.new_zeros(*mask.shape[:-1], 2)], dim=-1)
    link, outs = prompt_keys.new_empty(0), []
    for n in range(2):
        h, link = FusedLayerStep.apply(h, gate, link, *rotary_tables(cos[:, n], sin[:, n]), full_mask, buffers, grads,
                                       fixed)
        outs.append(h)
    keys, values = ChainEnd.apply(link, buffers, grads)
    return torch.cat(outs, dim=-1), keys, values


@pytest.mark.parametrize("kv", [2, 4])        # grouped-query heads, and one query per key/value head
def test_backward_matches_finite_differences(kv):
    model = tiny_llama(attention_bias=True, num_key_value_heads=kv).double()
    layer = model.model.layers[0]
    w = LayerWeights.of(layer, model.config)
    B, T0, hd = 3, 5, 4
    torch.manual_seed(1)
    h = torch.randn(B, 16, dtype=torch.float64, requires_grad=True)
    pk = torch.randn(B, kv, T0, hd, dtype=torch.float64, requires_grad=True)
    pv = torch.randn(B, kv, T0, hd, dtype=torch.float64, requires_grad=True)
    pad = torch.ones(B, T0, dtype=torch.float64)
    pad[0, :2] = 0                                                      # row 0 is left-padded
    mask = ((1 - pad) * torch.finfo(torch.float64).min)[:, None, None, :]
    positions = torch.tensor([[5, 6], [5, 6], [3, 4]])
    cos, sin = model.model.rotary_emb(h, positions)
    params = [p.detach().clone().requires_grad_() for p in
              (w.input_norm, w.qkv, w.qkv_bias, w.out, w.post_norm, w.gate_up, w.down)]

    def f(h, pk, pv, *params):
        return two_steps(w, h, pk, pv, mask, cos, sin, params)

    assert torch.autograd.gradcheck(f, (h, pk, pv, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_forward_is_the_decoder_layer():
    from transformers import DynamicCache

    model = tiny_llama()
    layer, B, T0 = model.model.layers[0], 2, 6
    torch.manual_seed(2)
    pk, pv = torch.randn(B, 2, T0, 4), torch.randn(B, 2, T0, 4)
    h = torch.randn(B, 16)
    positions = torch.full((B, 1), T0)
    cos, sin = model.model.rotary_emb(h, positions)
    cache = DynamicCache(config=model.config)
    cache.update(pk, pv, 0)
    want = layer(h[:, None], attention_mask=None, position_embeddings=(cos, sin), position_ids=positions,
                 use_cache=True, **{_cache_keyword(type(layer)): cache})[:, 0]
    w = LayerWeights.of(layer, model.config)
    buffers = KeyValueBuffers(pk, pv, 1)
    grads = StepGradients()
    gate = LayerGate.apply(pk, pv, *w.tensors(), grads)
    got, link = FusedLayerStep.apply(h, gate, pk.new_empty(0), *rotary_tables(cos[:, 0], sin[:, 0]), None, buffers,
                                     grads, w.detached())
    keys, values = ChainEnd.apply(link, buffers, grads)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(keys, cache.layers[0].keys[:, :, T0:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values, cache.layers[0].values[:, :, T0:], rtol=1e-5, atol=1e-6)


def chain_is_fused(model, grad: bool = True) -> bool:
    ids = torch.randint(3, 40, (2, 5))
    mask = torch.ones_like(ids)
    with torch.set_grad_enabled(grad):
        cache, _, _ = prefill(model, ids, mask)
        chain = start_chain(model, cache, mask, mask.sum(1), 2)
    assert isinstance(chain, _LlamaChain)
    return chain.fused is not None


def test_the_fused_step_runs_only_where_it_computes_the_same_function():
    model = tiny_llama().train()
    assert fusable(model) and chain_is_fused(model)
    assert not chain_is_fused(model, grad=False)                     # decoding keeps the in-place cache
    assert not fusable(tiny_llama(attention_dropout=0.1).train())
    assert fusable(tiny_llama(attention_dropout=0.1).eval())
    assert not fusable(tiny_llama(hidden_act="gelu"))
    assert not fusable(tiny_llama(mlp_bias=True))
    assert not fusable(tiny_llama().to(torch.bfloat16))
    checkpointed = tiny_llama()
    enable = getattr(checkpointed, "activation_checkpointing_enable", None) or checkpointed.gradient_checkpointing_enable
    enable()
    assert not fusable(checkpointed.train())


def test_lora_wrapped_layers_keep_the_model_path():
    pytest.importorskip("peft")
    from lori.training.lora import add_lora

    model = tiny_llama()
    add_lora(model, {"rank": 2, "alpha": 4, "dropout": 0.0})
    assert not fusable(model)


def test_frozen_weights_get_no_gradient():
    model = tiny_llama().train()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(3, 40, (2, 5))
    mask = torch.ones_like(ids)
    h0 = torch.randn(2, 16, requires_grad=True)
    cache, _, _ = prefill(model, ids, mask)
    chain = start_chain(model, cache, mask, mask.sum(1), 2)
    assert chain.fused is not None
    h = chain.step(h0).hidden
    h = chain.step(h).hidden
    h.pow(2).sum().backward()
    assert h0.grad is not None and torch.isfinite(h0.grad).all() and h0.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_repeated_and_partial_backward_passes():
    """``retain_graph`` passes each collect their own per-step contributions; a pass that stops
    before the gate (gradients for the thoughts' input only) leaves nothing behind."""
    model = tiny_llama().train()
    ids = torch.randint(3, 40, (2, 5))
    mask = torch.ones_like(ids)
    cache, _, _ = prefill(model, ids, mask)
    chain = start_chain(model, cache, mask, mask.sum(1), 2)
    h0 = torch.randn(2, 16, requires_grad=True)
    loss = chain.step(chain.step(h0).hidden).hidden.pow(2).sum()
    weight = model.model.layers[0].mlp.down_proj.weight
    first = torch.autograd.grad(loss, [weight], retain_graph=True)[0]
    torch.autograd.grad(loss, [h0], retain_graph=True)        # does not reach the weights' gate
    second = torch.autograd.grad(loss, [weight], retain_graph=True)[0]
    assert first.abs().sum() > 0
    assert torch.equal(first, second)
