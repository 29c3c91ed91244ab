"""One decoder layer on one new position, as a single autograd node with a hand-written backward.

A latent chain runs K one-position steps through every layer, with gradients. Through the
model's own layer each step is ~50 small ATen ops forward and ~100 backward, and each step
copies and differentiates the *whole* KV cache (``cat`` of prompt + thoughts, then a gradient of
that size accumulated per step), and every weight's gradient is written and accumulated once per
step. On a CPU that traffic is a large part of what a thought costs beyond its arithmetic
(bench/README.md, "The fused training step").

:class:`FusedLayerStep` computes the same function as a LLaMA-style decoder layer (RMSNorm,
rotary attention over the cache with grouped-query heads, SwiGLU MLP) in ~30 ops and its
gradient in ~40, saving only what the backward reads:

- **keys/values**: each layer's live in one :class:`KeyValueBuffers` for the whole chain (the
  prompt's copied in once, each step writing its own slot in place), so attention is one product
  over prompt and thoughts and nothing is concatenated per step; their gradients are accumulated
  in place in buffers of the same shape (with one query per key/value head, as outer products:
  ``addcmul_``), each step's backward reading its own slot's, complete once the later steps'
  backwards have run (the ``link`` between a layer's steps makes autograd keep that order);
- **weights**: each step leaves its output gradients and inputs ([B, *] each), and the layer's
  :class:`LayerGate` (the node through which the weights and the prompt's keys/values enter
  every step; autograd runs it after all the steps' backwards) forms every weight's gradient
  with one matmul over all K steps, instead of K weight-sized gradients written and accumulated
  (at small batch, the largest memory traffic of a step).

The thoughts' keys/values reach the model's forward after the chain through :class:`ChainEnd`.
Each backward pass (``retain_graph`` allows several) collects its own contributions.

Numerics: the same maths in a different order, so equal to the model's layer within float
rounding (tests/test_fused_step.py: ``gradcheck`` in float64, and the chain against the plain
Hugging Face path in tests/test_chain.py); CPU runs stay bitwise deterministic.

Under bf16 autocast (how training runs on a GPU) the step casts as the model's layer does there:
matmuls in bf16 (the projections cast once per chain rather than by autocast at every step),
the residual stream, norms, rotary map, keys, attention scores and softmax in float32, values in
bf16; the key/value gradients are summed in float32. Equal to the model's layers under autocast
within bf16 rounding (tests/test_chain.py, on CPU autocast).

Applies to float32 weights, without autocast or under bf16 autocast, plain ``nn.Linear``
projections (no LoRA wrappers), SiLU MLPs without bias, no per-head q/k norms, no attention
dropout; anything else (float16 autocast included) keeps the model's own layers
(:func:`fusable`). Forward hooks on the decoder layers do not run inside a fused chain
(transformers' own output-capturing hooks have nothing to capture there).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from lori.model.precision import autocast_dtype


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables ([B, hd] for one position, [B, T, hd] for a block) as :func:`rotate` applies
    them, with a head axis at dim 1: LLaMA's ``rotate_half(x) = cat(-x2, x1)`` is ``roll(x, hd/2)``
    with the first half's sign moved onto ``sin`` (the same products, so the same numbers)."""
    half = sin.shape[-1] // 2
    return cos[:, None], torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """LLaMA's ``apply_rotary_pos_emb`` for ``x`` [B, heads, (T,) hd] with :func:`rotary_tables`."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


def _rotate_back(d: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """The transpose of :func:`rotate` (a roll by half the width is its own inverse)."""
    return d * cos + (d * signed_sin).roll(d.shape[-1] // 2, -1)


def _rms_norm_backward(grad: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
                       grads: "StepGradients", name: str) -> torch.Tensor:
    """Gradient of ``x * rstd * weight`` (rstd = 1/rms(x)) for x; the weight's is left in ``grads``."""
    normed = x * rstd
    grads.add_norm(name, grad, normed)
    g = grad * weight
    return rstd * (g - normed * (g * normed).mean(-1, keepdim=True))


def _explicit_casts(x: torch.Tensor, w: "LayerWeights"):
    """Autocast off inside a step of a bf16 chain, whose casts are written out (``LayerWeights.low``):
    the same dtypes on every device, whatever autocast's per-device op lists say."""
    if w.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)


@dataclass
class LayerWeights:
    """One decoder layer's parameters, the projections concatenated (q|k|v and gate|up): fewer,
    larger matmuls. Built once per chain; the concatenation is differentiable. ``dtype``: the
    matmuls' under autocast (bf16: the projections are cast once per chain, where autocast would
    cast them at every step; the norm weights keep theirs), None without autocast."""
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
    dtype: torch.dtype | None = None

    @classmethod
    def of(cls, layer: nn.Module, config, dtype: torch.dtype | None = None) -> "LayerWeights":
        attn, mlp = layer.self_attn, layer.mlp
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        qkv_bias = torch.cat(biases) if biases[0] is not None else None
        gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        out, down = attn.o_proj.weight, mlp.down_proj.weight
        if dtype is not None:
            qkv, out, gate_up, down = (t.to(dtype) for t in (qkv, out, gate_up, down))
            qkv_bias = None if qkv_bias is None else qkv_bias.to(dtype)
        return cls(layer.input_layernorm.weight, qkv, qkv_bias, out, layer.post_attention_layernorm.weight, gate_up,
                   down, float(layer.input_layernorm.variance_epsilon), config.num_attention_heads,
                   config.num_key_value_heads, attn.head_dim, float(attn.scaling), dtype)

    def low(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the matmuls' dtype (itself without autocast: no op on the float32 path)."""
        return x if self.dtype is None or x.dtype == self.dtype else x.to(self.dtype)

    def tensors(self) -> tuple:
        """The weights in :class:`LayerGate`'s order."""
        return self.input_norm, self.qkv, self.qkv_bias, self.out, self.post_norm, self.gate_up, self.down

    def detached(self) -> "LayerWeights":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


def decoder_layers(model) -> list[nn.Module]:
    """A LLaMA-style causal LM's decoder layers, as its forward runs them (the first
    ``num_hidden_layers``, as transformers slices them)."""
    return list(model.model.layers[: model.config.num_hidden_layers])


def fusable(model, autocast: torch.dtype | None = None) -> bool:
    """Whether :class:`FusedLayerStep` computes what ``model``'s decoder layers compute (``model`` is
    LLaMA-style: see :func:`lori.model.chain.llama_style`), under ``autocast`` (None: off; bf16 is
    supported; float16, untested here, keeps the model's layers)."""
    if autocast not in (None, torch.bfloat16):
        return False
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
    for layer in decoder_layers(model):
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


class KeyValueBuffers:
    """One layer's keys/values for a whole chain [B, kv, T0 + steps, hd]: the prompt's, copied in
    once, then one slot per step written in place (each step reads only the slots up to its own,
    so what a later step writes never changes what an earlier one saved: the buffers are kept on
    ``ctx`` rather than saved, since autograd's version check would reject in-place writes to a
    saved tensor). Their gradients live in the layer's :class:`StepGradients`."""

    def __init__(self, prompt_keys: torch.Tensor, prompt_values: torch.Tensor, steps: int):
        B, kv, T0, hd = prompt_keys.shape
        self.prompt, self.filled = T0, T0
        self.keys = prompt_keys.new_empty(B, kv, T0 + steps, hd)
        self.values = prompt_values.new_empty(B, kv, T0 + steps, hd)
        self.keys[:, :, :T0], self.values[:, :, :T0] = prompt_keys.detach(), prompt_values.detach()

    def append(self, key: torch.Tensor, value: torch.Tensor) -> int:
        """Writes one position's key/value [B, kv, 1, hd]; returns its slot."""
        slot = self.filled
        self.keys[:, :, slot : slot + 1], self.values[:, :, slot : slot + 1] = key, value
        self.filled += 1
        return slot


class StepGradients:
    """One layer's gradients of the running backward pass: the keys'/values' gradients for every
    slot of its :class:`KeyValueBuffers`, accumulated in place by the steps' backwards (the prompt
    slots' leave through :class:`LayerGate`, a step's own through its q|k|v projection); and, per
    step, pairs whose product summed over steps is a gradient, for the gate: for each weight
    matrix its output gradient and input [B, *], for each norm weight the gradient of its output
    and the normalised input [B, d]."""

    def __init__(self):
        self.task = None
        self.clear()

    def clear(self) -> None:
        self.linear = {name: ([], []) for name in ("qkv", "out", "gate_up", "down")}
        self.norm = {name: ([], []) for name in ("input_norm", "post_norm")}
        self.d_keys = self.d_values = None

    def begin_step(self, buffers: KeyValueBuffers) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by each backward that writes here; returns the key/value gradient buffers.
        What an earlier backward pass left (one with ``retain_graph``, or one that did not reach
        the gate, e.g. ``autograd.grad`` for the inputs only) is dropped: each pass collects its own."""
        task = torch._C._current_graph_task_id()
        if task != self.task:
            self.clear()
            self.task = task
        if self.d_keys is None:     # at least float32 (the values are bf16 under autocast): summed over every step
            self.d_keys = torch.zeros_like(buffers.keys, dtype=torch.promote_types(buffers.keys.dtype, torch.float32))
            self.d_values = torch.zeros_like(buffers.values,
                                             dtype=torch.promote_types(buffers.values.dtype, torch.float32))
        return self.d_keys, self.d_values

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
    small batch); the prompt's key/value gradients are the steps' sums in ``grads``."""

    @staticmethod
    def forward(ctx, prompt_keys, prompt_values, input_norm, qkv, qkv_bias, out, post_norm, gate_up, down,
                grads: StepGradients):
        ctx.grads, ctx.prompt = grads, prompt_keys.shape[2]
        ctx.dtypes = prompt_keys.dtype, prompt_values.dtype
        return prompt_keys.new_zeros(())

    @staticmethod
    @once_differentiable
    def backward(ctx, _):
        g: StepGradients = ctx.grads
        needs = ctx.needs_input_grad
        if not g.linear["qkv"][0] or g.task != torch._C._current_graph_task_id():
            return (None,) * 10

        def summed(name):
            grad_out, inputs = (torch.cat(t) for t in g.linear[name])
            return grad_out.t() @ inputs, grad_out

        def norm(name):
            grad_out, normed = (torch.cat(t) for t in g.norm[name])
            return (grad_out * normed).sum(0)

        d_qkv_b = None
        d_qkv, grad_qkv = summed("qkv") if needs[3] or needs[4] else (None, None)
        if needs[4]:
            d_qkv_b = grad_qkv.sum(0)
        T0, (key_dtype, value_dtype) = ctx.prompt, ctx.dtypes
        grads = (g.d_keys[:, :, :T0].to(key_dtype) if needs[0] else None,
                 g.d_values[:, :, :T0].to(value_dtype) if needs[1] else None,
                 norm("input_norm") if needs[2] else None, d_qkv if needs[3] else None, d_qkv_b,
                 summed("out")[0] if needs[5] else None, norm("post_norm") if needs[6] else None,
                 summed("gate_up")[0] if needs[7] else None, summed("down")[0] if needs[8] else None, None)
        g.clear()
        return grads


class FusedLayerStep(torch.autograd.Function):
    """``(h [B, d], link) -> (layer output [B, d], link)``: this position's key/value is written into
    the layer's :class:`KeyValueBuffers` and attention reads the buffers' filled slots (prompt and
    steps so far); the weights (``w``, detached) get their gradients through the layer's
    :class:`LayerGate`. ``link`` (an empty tensor) passes from each step to the next step of the same
    layer, so that autograd runs their backwards latest step first, as the in-place key/value
    gradients need, even where nothing else connects them."""

    @staticmethod
    def forward(ctx, h, gate, link, cos, sin, mask, buffers: KeyValueBuffers, grads: StepGradients, w: LayerWeights):
        """``cos``, ``sin``: this position's tables from :func:`rotary_tables`; ``mask``: additive
        [B, 1, 1, T0 + steps] or None."""
        with _explicit_casts(h, w):
            return FusedLayerStep._forward(ctx, h, link, cos, sin, mask, buffers, grads, w)

    @staticmethod
    def _forward(ctx, h, link, cos, sin, mask, buffers: KeyValueBuffers, grads: StepGradients, w: LayerWeights):
        # dtypes under bf16 autocast, as the model's layer has them there: the residual stream,
        # norms, rotary map, keys, scores and softmax in float32; matmul inputs/outputs, values in bf16
        B = h.shape[0]
        kv, hd = w.kv_heads, w.head_dim
        groups = w.heads // kv
        rstd1 = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + w.eps)
        normed = w.low(h * rstd1 * w.input_norm)
        qkv = F.linear(normed, w.qkv, w.qkv_bias)
        qk, v = qkv.split([(w.heads + kv) * hd, kv * hd], dim=-1)
        qk = rotate(qk.view(B, w.heads + kv, hd), cos, sin)      # queries and keys rotated together
        q = qk[:, : w.heads].reshape(B, kv, groups, hd)
        slot = buffers.append(qk[:, w.heads :].view(B, kv, 1, hd), v.view(B, kv, 1, hd))
        keys, values = buffers.keys[:, :, : slot + 1], buffers.values[:, :, : slot + 1]
        scores = (q @ keys.transpose(-1, -2)) * w.scaling                       # [B, kv, g, slot + 1]
        if mask is not None:
            scores += mask[..., : slot + 1]
        p = torch.softmax(scores, dim=-1)
        attn = (w.low(p) @ values).reshape(B, w.heads * hd)
        mid = h + attn @ w.out.t()
        rstd2 = torch.rsqrt(mid.pow(2).mean(-1, keepdim=True) + w.eps)
        normed2 = w.low(mid * rstd2 * w.post_norm)
        gate_pre, up = (normed2 @ w.gate_up.t()).chunk(2, dim=-1)
        act = F.silu(gate_pre)
        inner = act * up
        out = mid + inner @ w.down.t()
        ctx.save_for_backward(h, rstd1, normed, q, p, attn, mid, rstd2, normed2, gate_pre, up, act, inner, cos, sin)
        ctx.grads, ctx.w, ctx.buffers, ctx.slot = grads, w, buffers, slot
        return out, link.new_empty(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, _):
        w: LayerWeights = ctx.w
        with _explicit_casts(d_out, w):
            return FusedLayerStep._backward(ctx, d_out)

    @staticmethod
    def _backward(ctx, d_out):
        h, rstd1, normed, q, p, attn, mid, rstd2, normed2, gate_pre, up, act, inner, cos, sin = ctx.saved_tensors
        w: LayerWeights = ctx.w
        g: StepGradients = ctx.grads
        buffers: KeyValueBuffers = ctx.buffers
        d_key_buffer, d_value_buffer = g.begin_step(buffers)
        B, slot, hd = h.shape[0], ctx.slot, w.head_dim
        # MLP
        d_down = w.low(d_out)
        g.add_linear("down", d_down, inner)
        d_inner = d_down @ w.down
        d_gate_up = torch.cat([torch.ops.aten.silu_backward(d_inner * up, gate_pre), d_inner * act], dim=-1)
        g.add_linear("gate_up", d_gate_up, normed2)
        d_mid = _rms_norm_backward(d_gate_up @ w.gate_up, mid, rstd2, w.post_norm, g, "post_norm") + d_out
        # attention: this step's share of every filled slot's key/value gradient goes into the buffers
        d_mid_low = w.low(d_mid)
        g.add_linear("out", d_mid_low, attn)
        d_attn = (d_mid_low @ w.out).view(B, w.kv_heads, -1, hd)
        keys, values = buffers.keys[:, :, : slot + 1], buffers.values[:, :, : slot + 1]
        d_p = (d_attn @ values.transpose(-1, -2)).to(p.dtype)
        d_scores = torch.ops.aten._softmax_backward_data(d_p, p, -1, p.dtype) * w.scaling
        d_q = d_scores @ keys
        # one query per key/value head: the products are outer products, added in place (baddbmm_
        # into the strided buffer views would loop over the batch on CPU)
        if q.shape[2] == 1:
            d_key_buffer[:, :, : slot + 1].addcmul_(d_scores.transpose(-1, -2), q)
            d_value_buffer[:, :, : slot + 1].addcmul_(p.transpose(-1, -2), d_attn)
        else:
            d_key_buffer[:, :, : slot + 1] += d_scores.transpose(-1, -2) @ q
            d_value_buffer[:, :, : slot + 1] += p.transpose(-1, -2) @ d_attn.to(p.dtype)
        # rotary (orthogonal: its transpose rotates back) and the q|k|v projection; the later steps'
        # backwards have already added their shares to this slot's key/value gradient
        d_qk = torch.cat([d_q.reshape(B, w.heads, hd), d_key_buffer[:, :, slot]], dim=1)
        d_qkv = w.low(torch.cat([_rotate_back(d_qk, cos, sin).reshape(B, -1),
                                 d_value_buffer[:, :, slot].reshape(B, -1)], dim=-1))
        g.add_linear("qkv", d_qkv, normed)
        d_h = _rms_norm_backward(d_qkv @ w.qkv, h, rstd1, w.input_norm, g, "input_norm") + d_mid
        return d_h, None, None, None, None, None, None, None, None


class ChainEnd(torch.autograd.Function):
    """``link -> (keys, values)`` of a layer's steps [B, kv, n, hd], for the model's forward after
    the chain: their gradients go into the layer's :class:`StepGradients` before any step's
    backward reads them (each step's backward waits for this one, through the links)."""

    @staticmethod
    def forward(ctx, link, buffers: KeyValueBuffers, grads: StepGradients):
        ctx.buffers, ctx.grads = buffers, grads
        T0, n = buffers.prompt, buffers.filled
        return buffers.keys[:, :, T0:n].clone(), buffers.values[:, :, T0:n].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_keys, d_values):
        buffers: KeyValueBuffers = ctx.buffers
        d_key_buffer, d_value_buffer = ctx.grads.begin_step(buffers)
        T0, n = buffers.prompt, buffers.prompt + d_keys.shape[2]
        d_key_buffer[:, :, T0:n] += d_keys
        d_value_buffer[:, :, T0:n] += d_values
        return None, None, None


class FusedChainLayers:
    """The K-step chain's state across all layers for :class:`FusedLayerStep`: per layer its
    key/value buffers (the prompt's from the prefill's cache, then the steps'), its gate and the
    link from its last step."""

    def __init__(self, model, cache, prompt_mask: torch.Tensor, steps: int):
        layers = decoder_layers(model)
        weights = [LayerWeights.of(layer, model.config, autocast_dtype(prompt_mask.device.type)) for layer in layers]
        self.weights = [w.detached() for w in weights]
        self.cache = cache
        prompt = [(layer.keys, layer.values) for layer in cache.layers]
        self.buffers = [KeyValueBuffers(k, v, steps) for k, v in prompt]
        self.grads = [StepGradients() for _ in layers]
        self.gates = [LayerGate.apply(k, v, *w.tensors(), g) for (k, v), w, g in zip(prompt, weights, self.grads)]
        self.links = [k.new_empty(0) for k, _ in prompt]
        dtype = prompt[0][0].dtype
        # additive mask on the prompt's (left-padded) positions; the steps are never masked
        self.mask = None if bool(prompt_mask.all()) else torch.cat(
            [(1 - prompt_mask.to(dtype)) * torch.finfo(dtype).min, prompt_mask.new_zeros(prompt_mask.shape[0], steps,
                                                                                          dtype=dtype)],
            dim=1)[:, None, None, :]

    def step(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keep: set[int]) -> tuple[torch.Tensor, dict]:
        """All layers on one position: input [B, d] -> last layer's output [B, d] and the outputs of
        the layers in ``keep`` (hidden_states indices)."""
        states = {}
        cos, sin = rotary_tables(cos, sin)
        for i, w in enumerate(self.weights):
            h, self.links[i] = FusedLayerStep.apply(h, self.gates[i], self.links[i], cos, sin, self.mask,
                                                    self.buffers[i], self.grads[i], w)
            if i + 1 in keep:
                states[i + 1] = h
        return h, states

    def end(self):
        """The prefill's cache with the steps' keys/values appended (differentiably), for the model's forward."""
        for layer, link, buffers, grads in zip(self.cache.layers, self.links, self.buffers, self.grads):
            if buffers.filled > buffers.prompt:
                # the cache layer's own update keeps its bookkeeping (e.g. a sliding window's length)
                layer.update(*ChainEnd.apply(link, buffers, grads))
        return self.cache
