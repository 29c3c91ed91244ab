"""One decoder layer on one new position, as a single autograd node with a hand-written backward.

A latent chain runs K one-position steps through every layer, with gradients. Through the
model's own layer each step is ~50 small ATen ops forward and ~100 backward, and each step
copies and differentiates the *whole* KV cache (``cat`` of prompt + thoughts, then a gradient of
that size accumulated per step), and every weight's gradient is written and accumulated once per
step. On a CPU that traffic is a large part of what a thought costs beyond its arithmetic
(bench/README.md, "The fused training step").

:class:`FusedLayerStep` computes the same function as a LLaMA-style decoder layer (RMSNorm,
rotary attention over the cache with grouped-query heads, SwiGLU MLP) in ~30 ops and its
gradient in ~40, saving only what the backward reads. Two kinds of gradient are not formed per
step but once per chain, by the layer's :class:`LayerGate` (the node through which the prompt's
keys/values and the layer's weights enter every step; autograd runs it after all the steps'
backwards):

- the **prompt's** keys/values, fixed for the whole chain, are read by every step and copied by
  none; each step leaves its attention weights and score gradients on them;
- the **weights**: each step leaves its output gradients and inputs ([B, *] each), and the gate
  forms every weight's gradient with one matmul over all K steps, instead of K weight-sized
  gradients written and accumulated (at small batch, the largest memory traffic of a step).

The thoughts' own keys/values (a few positions) grow by ``cat`` and are differentiated normally.
Each backward pass (``retain_graph`` allows several) collects its own contributions.

Numerics: the same maths in a different order, so equal to the model's layer within float
rounding (tests/test_fused_step.py: ``gradcheck`` in float64, and the chain against the plain
Hugging Face path in tests/test_chain.py); CPU runs stay bitwise deterministic.

Applies to float32 weights without autocast, plain ``nn.Linear`` projections (no LoRA
wrappers), SiLU MLPs without bias, no per-head q/k norms, no attention dropout; anything else
keeps the model's own layers (:func:`fusable`). Forward hooks on the decoder layers do not run
inside a fused chain (transformers' own output-capturing hooks have nothing to capture there).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rms_norm_backward(grad: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
                       grads: "StepGradients", name: str) -> torch.Tensor:
    """Gradient of ``x * rstd * weight`` (rstd = 1/rms(x)) for x; the weight's is left in ``grads``."""
    normed = x * rstd
    grads.add_norm(name, grad, normed)
    g = grad * weight
    return rstd * (g - normed * (g * normed).mean(-1, keepdim=True))


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

    def tensors(self) -> tuple:
        """The weights in :class:`LayerGate`'s order."""
        return self.input_norm, self.qkv, self.qkv_bias, self.out, self.post_norm, self.gate_up, self.down

    def detached(self) -> "LayerWeights":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


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


class StepGradients:
    """What each step's backward leaves for :class:`LayerGate`, per step, as pairs whose product
    summed over steps is a gradient: for the prompt's keys the score gradients on the prompt
    [B, kv, g, T0] and the queries [B, kv, g, hd], for its values the attention probabilities on
    the prompt and the attention-output gradients; for each weight matrix its output gradient
    and input [B, *]; for each norm weight the gradient of its output and the normalised input
    [B, d]."""

    def __init__(self):
        self.task = None
        self.clear()

    def clear(self) -> None:
        self.prompt = {name: ([], []) for name in ("keys", "values")}
        self.linear = {name: ([], []) for name in ("qkv", "out", "gate_up", "down")}
        self.norm = {name: ([], []) for name in ("input_norm", "post_norm")}

    def begin_step(self) -> None:
        """Called by each step's backward: entries left by an earlier backward pass (one that
        did not reach the gate, e.g. ``autograd.grad`` for the inputs only) are dropped."""
        task = torch._C._current_graph_task_id()
        if task != self.task:
            self.clear()
            self.task = task

    def add_prompt(self, name: str, left: torch.Tensor, right: torch.Tensor) -> None:
        self.prompt[name][0].append(left)
        self.prompt[name][1].append(right)

    def add_linear(self, name: str, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
        self.linear[name][0].append(grad_out)
        self.linear[name][1].append(inputs)

    def add_norm(self, name: str, grad_out: torch.Tensor, normed: torch.Tensor) -> None:
        self.norm[name][0].append(grad_out)
        self.norm[name][1].append(normed)


class LayerGate(torch.autograd.Function):
    """The node through which a layer's weights and the prompt's keys/values enter every step of
    the chain: its output is a zero scalar that each step takes as an input. Autograd runs its
    backward after all the steps' backwards, so the per-step contributions are summed here in
    one matmul per tensor (``[K*B, out]^T @ [K*B, in]``) instead of K small matmuls, each
    writing and accumulating a weight-sized gradient (a LoRi step's largest memory traffic at
    small batch)."""

    @staticmethod
    def forward(ctx, prompt_keys, prompt_values, input_norm, qkv, qkv_bias, out, post_norm, gate_up, down,
                grads: StepGradients):
        ctx.grads = grads
        return prompt_keys.new_zeros(())

    @staticmethod
    @once_differentiable
    def backward(ctx, _):
        g: StepGradients = ctx.grads
        needs = ctx.needs_input_grad
        if not g.prompt["keys"][0] or g.task != torch._C._current_graph_task_id():
            return (None,) * 10

        def summed(name):
            grad_out, inputs = (torch.cat(t) for t in g.linear[name])
            return grad_out.t() @ inputs, grad_out

        def norm(name):
            grad_out, normed = (torch.cat(t) for t in g.norm[name])
            return (grad_out * normed).sum(0)

        def prompt(name):          # steps stacked along the query axis: [B, kv, K*g, *]
            left, right = (torch.cat(t, dim=2) for t in g.prompt[name])
            return left.transpose(-1, -2) @ right

        d_qkv_b = None
        d_qkv, grad_qkv = summed("qkv") if needs[3] or needs[4] else (None, None)
        if needs[4]:
            d_qkv_b = grad_qkv.sum(0)
        grads = (prompt("keys") if needs[0] else None, prompt("values") if needs[1] else None,
                 norm("input_norm") if needs[2] else None, d_qkv if needs[3] else None, d_qkv_b,
                 summed("out")[0] if needs[5] else None, norm("post_norm") if needs[6] else None,
                 summed("gate_up")[0] if needs[7] else None, summed("down")[0] if needs[8] else None, None)
        g.clear()
        return grads


class FusedLayerStep(torch.autograd.Function):
    """``(h [B, d], thought keys/values [B, kv, n, hd]) -> (layer output [B, d], keys/values with
    this position appended [B, kv, n + 1, hd])``. The prompt's keys/values are read, not copied,
    and the weights (``w``, detached) get their gradients through the layer's :class:`LayerGate`."""

    @staticmethod
    def forward(ctx, h, gate, thought_keys, thought_values, cos, sin, prompt_keys, prompt_values, prompt_mask,
                grads: StepGradients, w: LayerWeights):
        B = h.shape[0]
        kv, hd = w.kv_heads, w.head_dim
        groups = w.heads // kv
        rstd1 = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + w.eps)
        normed = h * rstd1 * w.input_norm
        qkv = F.linear(normed, w.qkv, w.qkv_bias)
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
        mid = h + attn @ w.out.t()
        rstd2 = torch.rsqrt(mid.pow(2).mean(-1, keepdim=True) + w.eps)
        normed2 = mid * rstd2 * w.post_norm
        gate_pre, up = (normed2 @ w.gate_up.t()).chunk(2, dim=-1)
        act = F.silu(gate_pre)
        inner = act * up
        out = mid + inner @ w.down.t()
        ctx.save_for_backward(h, rstd1, normed, q, keys, values, p, attn, mid, rstd2, normed2, gate_pre, up, act,
                              inner, cos, sin, prompt_keys, prompt_values)
        ctx.grads, ctx.w = grads, w
        return out, keys, values

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_keys, d_values):
        (h, rstd1, normed, q, keys, values, p, attn, mid, rstd2, normed2, gate_pre, up, act, inner, cos, sin,
         prompt_keys, prompt_values) = ctx.saved_tensors
        w: LayerWeights = ctx.w
        g: StepGradients = ctx.grads
        g.begin_step()
        B, T0, hd = h.shape[0], prompt_keys.shape[2], w.head_dim
        # MLP
        g.add_linear("down", d_out, inner)
        d_inner = d_out @ w.down
        sig = torch.sigmoid(gate_pre)
        d_gate_up = torch.cat([d_inner * up * sig * (1 + gate_pre * (1 - sig)), d_inner * act], dim=-1)
        g.add_linear("gate_up", d_gate_up, normed2)
        d_mid = _rms_norm_backward(d_gate_up @ w.gate_up, mid, rstd2, w.post_norm, g, "post_norm") + d_out
        # attention
        g.add_linear("out", d_mid, attn)
        d_attn = (d_mid @ w.out).view(B, w.kv_heads, -1, hd)
        d_p = torch.cat([d_attn @ prompt_values.transpose(-1, -2), d_attn @ values.transpose(-1, -2)], dim=-1)
        d_scores = p * (d_p - (p * d_p).sum(-1, keepdim=True)) * w.scaling
        d_q = d_scores[..., :T0] @ prompt_keys + d_scores[..., T0:] @ keys
        d_keys = d_scores[..., T0:].transpose(-1, -2) @ q + (d_keys if d_keys is not None else 0)
        d_values = p[..., T0:].transpose(-1, -2) @ d_attn + (d_values if d_values is not None else 0)
        g.add_prompt("keys", d_scores[..., :T0], q)
        g.add_prompt("values", p[..., :T0], d_attn)
        # rotary (an orthogonal map: its transpose rotates back) and the q|k|v projection
        c, s = cos[:, None, None], sin[:, None, None]
        d_k = d_keys[:, :, -1:]
        d_qkv = torch.cat([(d_q * c - _rotate_half(d_q * s)).reshape(B, -1),
                           (d_k * c - _rotate_half(d_k * s)).reshape(B, -1),
                           d_values[:, :, -1:].reshape(B, -1)], dim=-1)
        g.add_linear("qkv", d_qkv, normed)
        d_h = _rms_norm_backward(d_qkv @ w.qkv, h, rstd1, w.input_norm, g, "input_norm") + d_mid
        return (d_h, torch.zeros_like(cos[0, 0]), d_keys[:, :, :-1], d_values[:, :, :-1],
                None, None, None, None, None, None, None)


class FusedChainLayers:
    """The K-step chain's state across all layers for :class:`FusedLayerStep`: the prompt's keys
    and values (from the prefill's cache), one gate per layer, the thoughts' keys and values."""

    def __init__(self, model, cache, prompt_mask: torch.Tensor):
        layers = model.model.layers[: model.config.num_hidden_layers]
        weights = [LayerWeights.of(layer, model.config) for layer in layers]
        self.weights = [w.detached() for w in weights]
        self.cache = cache
        self.prompt = [(layer.keys, layer.values) for layer in cache.layers]
        self.grads = [StepGradients() for _ in layers]
        self.gates = [LayerGate.apply(k, v, *w.tensors(), g) for (k, v), w, g in zip(self.prompt, weights, self.grads)]
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
            h, tk, tv = FusedLayerStep.apply(h, self.gates[i], tk, tv, cos, sin, pk.detach(), pv.detach(), self.mask,
                                             self.grads[i], w)
            self.thoughts[i] = (tk, tv)
            if i + 1 in keep:
                states[i + 1] = h
        return h, states

    def end(self):
        """The prefill's cache with the thoughts appended (differentiably), for the model's forward."""
        for layer, (tk, tv) in zip(self.cache.layers, self.thoughts):
            layer.update(tk, tv)        # the cache layer's own bookkeeping (e.g. a sliding window's length)
        return self.cache
