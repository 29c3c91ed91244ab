"""One decoder layer on one new position, as a single autograd node with a hand-written backward.

A latent chain runs K one-position steps through every layer, with gradients. Through the
model's own layer each step is ~50 small ATen ops forward and ~100 backward, and each step
copies and differentiates the *whole* KV cache (``cat`` of prompt + thoughts, then a gradient of
that size accumulated per step). On a CPU that bookkeeping, not the step's arithmetic, is most
of a LoRi step's cost (bench/README.md, "The latent chain").

:class:`FusedLayerStep` computes the same function as a LLaMA-style decoder layer (RMSNorm,
rotary attention over the cache with grouped-query heads, SwiGLU MLP) in ~30 ops and its
gradient in ~45, saving only what the backward reads. The cache is split in two:

- the **prompt's** keys/values, fixed for the whole chain: every step reads them, none copies
  them. A step's gradient for them is a rank-1 (per head group) product, so it is not formed
  per step: each step leaves its attention weights and score gradients in a
  :class:`PrefixGradients`, and :class:`PromptGate` (the node through which the prompt's
  keys/values enter the chain, run by autograd after every step's backward) turns them into
  one ``dK``/``dV`` with a single batched matmul;
- the **thoughts'** keys/values, a few positions, grown by ``cat`` and differentiated normally.

Numerics: the same maths in a different order, so equal to the model's layer within float
rounding (tests/test_fused_step.py: ``gradcheck`` in float64, and the chain against the plain
Hugging Face path in tests/test_chain.py); CPU runs stay bitwise deterministic.

Applies to float32 weights without autocast, plain ``nn.Linear`` projections (no LoRA
wrappers), SiLU MLPs without bias, no per-head q/k norms, no attention dropout; anything else
keeps the model's own layers (:func:`fusable`). Forward hooks on the decoder layers do not run
inside a fused chain (transformers' own output-capturing hooks have nothing to capture there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rms_norm_backward(grad: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor):
    """Gradients of ``x * rstd * weight`` (rstd = 1/rms(x)) for x and weight."""
    normed = x * rstd
    grad_weight = (grad * normed).sum(0)
    g = grad * weight
    return rstd * (g - normed * (g * normed).mean(-1, keepdim=True)), grad_weight


@dataclass
class LayerWeights:
    """One decoder layer's parameters, the projections concatenated (q|k|v and gate|up): fewer,
    larger matmuls. Built once per chain; the concatenation is differentiable."""
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    eps: float
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float

    @classmethod
    def of(cls, layer: nn.Module, config) -> "LayerWeights":
        attn, mlp = layer.self_attn, layer.mlp
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        return cls(layer.input_layernorm.weight,
                   torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                   torch.cat(biases) if biases[0] is not None else None,
                   attn.o_proj.weight, layer.post_attention_layernorm.weight,
                   torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight,
                   float(layer.input_layernorm.variance_epsilon), config.num_attention_heads,
                   config.num_key_value_heads, attn.head_dim, float(attn.scaling))


def fusable(model) -> bool:
    """Whether :class:`FusedLayerStep` computes exactly what ``model``'s decoder layers compute
    (``model`` is LLaMA-style: see :func:`lori.model.chain.llama_style`)."""
    cfg = model.config
    if getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "mlp_bias", False):
        return False
    if model.training and float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0:
        return False
    # recomputing layers in the backward (gradient checkpointing) is the model's own layer call
    checkpointing = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    if getattr(model, checkpointing, False):
        return False
    for layer in model.model.layers[: cfg.num_hidden_layers]:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None or hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            return False
        linears = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(m) is not nn.Linear for m in linears):       # LoRA and other wrappers change the function
            return False
        if any(m.bias is not None for m in linears[3:]) or any(m.weight.dtype != torch.float32 for m in linears):
            return False
        if not all(hasattr(n, "variance_epsilon") for n in (layer.input_layernorm, layer.post_attention_layernorm)):
            return False
    return True


class PrefixGradients:
    """What each step's backward leaves for the prompt's keys/values: per step, the score
    gradients and attention weights on the prompt [B, kv, g, T0] and the query / output
    gradient [B, kv, g, hd]."""

    def __init__(self):
        self.scores, self.queries, self.weights, self.outputs = [], [], [], []


class PromptGate(torch.autograd.Function):
    """Identity for the graph, a zero scalar as output: the node through which the prompt's
    keys/values enter every step. Autograd runs it after all the steps' backwards (they all
    take its output), so it can sum their contributions in one matmul."""

    @staticmethod
    def forward(ctx, keys: torch.Tensor, values: torch.Tensor, grads: PrefixGradients):
        ctx.grads = grads
        return keys.new_zeros(())

    @staticmethod
    @once_differentiable
    def backward(ctx, _):
        g: PrefixGradients = ctx.grads
        if not g.scores:
            return None, None, None
        d_keys = torch.cat(g.scores, dim=2).transpose(-1, -2) @ torch.cat(g.queries, dim=2)
        d_values = torch.cat(g.weights, dim=2).transpose(-1, -2) @ torch.cat(g.outputs, dim=2)
        g.scores, g.queries, g.weights, g.outputs = [], [], [], []
        return d_keys, d_values, None


class FusedLayerStep(torch.autograd.Function):
    """``(h [B, d], thought keys/values [B, kv, n, hd]) -> (layer output [B, d], keys/values with
    this position appended [B, kv, n + 1, hd])``; the prompt's keys/values are read, not copied."""

    @staticmethod
    def forward(ctx, h, gate, thought_keys, thought_values, input_norm, qkv_w, qkv_b, out_w, post_norm, gate_up_w,
                down_w, cos, sin, prompt_keys, prompt_values, prompt_mask, grads: PrefixGradients, w: LayerWeights):
        B = h.shape[0]
        kv, hd = w.kv_heads, w.head_dim
        groups = w.heads // kv
        rstd1 = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + w.eps)
        normed = h * rstd1 * input_norm
        qkv = F.linear(normed, qkv_w, qkv_b)
        q, k, v = qkv.split([w.heads * hd, kv * hd, kv * hd], dim=-1)
        c, s = cos[:, None, None], sin[:, None, None]
        q, k, v = q.view(B, kv, groups, hd), k.view(B, kv, 1, hd), v.view(B, kv, 1, hd)
        q = q * c + _rotate_half(q) * s
        k = k * c + _rotate_half(k) * s
        keys, values = torch.cat([thought_keys, k], dim=2), torch.cat([thought_values, v], dim=2)
        T0 = prompt_keys.shape[2]
        scores = torch.cat([q @ prompt_keys.transpose(-1, -2), q @ keys.transpose(-1, -2)], dim=-1) * w.scaling
        if prompt_mask is not None:
            scores[..., :T0] += prompt_mask
        p = torch.softmax(scores, dim=-1)                                        # [B, kv, g, T0 + n + 1]
        attn = (p[..., :T0] @ prompt_values + p[..., T0:] @ values).reshape(B, w.heads * hd)
        mid = h + attn @ out_w.t()
        rstd2 = torch.rsqrt(mid.pow(2).mean(-1, keepdim=True) + w.eps)
        normed2 = mid * rstd2 * post_norm
        gate_pre, up = (normed2 @ gate_up_w.t()).chunk(2, dim=-1)
        act = F.silu(gate_pre)
        inner = act * up
        out = mid + inner @ down_w.t()
        ctx.save_for_backward(h, rstd1, normed, q, keys, values, p, attn, mid, rstd2, normed2, gate_pre, up, act,
                              inner, input_norm, qkv_w, out_w, post_norm, gate_up_w, down_w, cos, sin,
                              prompt_keys, prompt_values)
        ctx.grads, ctx.w = grads, w
        return out, keys, values

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_keys, d_values):
        (h, rstd1, normed, q, keys, values, p, attn, mid, rstd2, normed2, gate_pre, up, act, inner, input_norm, qkv_w,
         out_w, post_norm, gate_up_w, down_w, cos, sin, prompt_keys, prompt_values) = ctx.saved_tensors
        w: LayerWeights = ctx.w
        B, T0, hd = h.shape[0], prompt_keys.shape[2], w.head_dim
        needs = ctx.needs_input_grad          # frozen weights (e.g. a probe) get no gradient computed
        # MLP
        d_down = d_out.t() @ inner if needs[10] else None
        d_inner = d_out @ down_w
        sig = torch.sigmoid(gate_pre)
        d_gate_up = torch.cat([d_inner * up * sig * (1 + gate_pre * (1 - sig)), d_inner * act], dim=-1)
        d_gate_up_w = d_gate_up.t() @ normed2 if needs[9] else None
        d_mid, d_post_norm = _rms_norm_backward(d_gate_up @ gate_up_w, mid, rstd2, post_norm)
        d_mid = d_mid + d_out
        # attention
        d_out_w = d_mid.t() @ attn if needs[7] else None
        d_attn = (d_mid @ out_w).view(B, w.kv_heads, -1, hd)
        d_p = torch.cat([d_attn @ prompt_values.transpose(-1, -2), d_attn @ values.transpose(-1, -2)], dim=-1)
        d_scores = p * (d_p - (p * d_p).sum(-1, keepdim=True)) * w.scaling
        d_q = d_scores[..., :T0] @ prompt_keys + d_scores[..., T0:] @ keys
        d_keys = d_scores[..., T0:].transpose(-1, -2) @ q + (d_keys if d_keys is not None else 0)
        d_values = p[..., T0:].transpose(-1, -2) @ d_attn + (d_values if d_values is not None else 0)
        g = ctx.grads
        g.scores.append(d_scores[..., :T0])
        g.queries.append(q)
        g.weights.append(p[..., :T0])
        g.outputs.append(d_attn)
        # rotary (an orthogonal map: its transpose rotates back) and the q|k|v projection
        c, s = cos[:, None, None], sin[:, None, None]
        d_k = d_keys[:, :, -1:]
        d_qkv = torch.cat([(d_q * c - _rotate_half(d_q * s)).reshape(B, -1),
                           (d_k * c - _rotate_half(d_k * s)).reshape(B, -1),
                           d_values[:, :, -1:].reshape(B, -1)], dim=-1)
        d_qkv_w = d_qkv.t() @ normed if needs[5] else None
        d_h, d_input_norm = _rms_norm_backward(d_qkv @ qkv_w, h, rstd1, input_norm)
        d_h = d_h + d_mid
        return (d_h, torch.zeros_like(cos[0, 0]), d_keys[:, :, :-1], d_values[:, :, :-1], d_input_norm, d_qkv_w,
                d_qkv.sum(0) if needs[6] else None, d_out_w, d_post_norm, d_gate_up_w, d_down,
                None, None, None, None, None, None, None, None)


class FusedChainLayers:
    """The K-step chain's state across all layers for :class:`FusedLayerStep`: the prompt's keys
    and values (from the prefill's cache), one gate per layer, the thoughts' keys and values."""

    def __init__(self, model, cache, prompt_mask: torch.Tensor):
        layers = model.model.layers[: model.config.num_hidden_layers]
        self.weights = [LayerWeights.of(layer, model.config) for layer in layers]
        self.cache = cache
        self.prompt = [(layer.keys, layer.values) for layer in cache.layers]
        self.grads = [PrefixGradients() for _ in layers]
        self.gates = [PromptGate.apply(k, v, g) for (k, v), g in zip(self.prompt, self.grads)]
        self.thoughts = [(k[:, :, :0], v[:, :, :0]) for k, v in self.prompt]
        dtype = self.prompt[0][0].dtype
        # additive mask on the prompt's (left-padded) positions; the thoughts are never masked
        self.mask = None if bool(prompt_mask.all()) else \
            ((1 - prompt_mask.to(dtype)) * torch.finfo(dtype).min)[:, None, None, :]

    def step(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keep: set[int]) -> tuple[torch.Tensor, dict]:
        """All layers on one position: input [B, d] -> last layer's output [B, d] and the outputs of
        the layers in ``keep`` (hidden_states indices)."""
        states = {}
        for i, w in enumerate(self.weights):
            tk, tv = self.thoughts[i]
            pk, pv = self.prompt[i]
            h, tk, tv = FusedLayerStep.apply(h, self.gates[i], tk, tv, w.input_norm, w.qkv, w.qkv_bias, w.out,
                                             w.post_norm, w.gate_up, w.down, cos, sin, pk.detach(), pv.detach(),
                                             self.mask, self.grads[i], w)
            self.thoughts[i] = (tk, tv)
            if i + 1 in keep:
                states[i + 1] = h
        return h, states

    def end(self):
        """The prefill's cache with the thoughts appended (differentiably), for the model's forward."""
        for layer, (tk, tv) in zip(self.cache.layers, self.thoughts):
            layer.update(tk, tv)        # the cache layer's own bookkeeping (e.g. a sliding window's length)
        return self.cache
