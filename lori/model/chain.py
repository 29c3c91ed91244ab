"""The sequential loop of one position per step: latent thoughts and greedy decoding share it.

A latent chain (K thoughts fed back as input embeddings) and token-by-token decoding both extend
a prefilled KV cache by one position for the whole batch, step after step. Through the model's
full forward each step also rebuilds the attention mask, copies the whole KV cache, keeps every
layer's hidden states and runs the LM head; on a CPU that costs more than the step's own
arithmetic (bench/README.md, "The latent chain"). :class:`Chain` runs those steps instead:

- LLaMA-style decoders (LLaMA, SmolLM2, Qwen2, Qwen3, Mistral; full attention): the model's
  decoder layers are called one after the other on the new position, with the attention mask,
  positions and rotary tables of the whole chain built once; only the requested hidden states
  are kept, and the LM head runs only when logits are asked for. The prompt block (``prefill``)
  runs the last decoder layer on its last position only, with the keys/values of the others:
  nothing reads that layer's output elsewhere. Without autograd (decoding,
  evaluation) the KV cache is preallocated for the whole chain and written in place. With
  autograd (training), where :func:`lori.model.fused_step.fusable` holds (float32 weights,
  no autocast or bf16 autocast, plain ``Linear`` layers, SiLU MLP, no q/k norms), each layer
  and step is one hand-written autograd node that reads the prompt's cache instead of copying
  it (:mod:`lori.model.fused_step`);
  otherwise the layers' cache grows by concatenation, since a tensor saved for the backward
  pass cannot be overwritten.
- any other model (GPT-2, ...): the model's own forward per step, with the attention mask and
  positions preallocated.

Without autograd the layers, their attention kernel and the cache are the model's own, so the
chain computes what the plain forward computes, to the bit on CPU; the fused training step
computes the same function in another order, equal within float rounding (tests/test_chain.py,
tests/test_fused_step.py).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from lori.model.fused_step import FusedChainLayers, decoder_layers, fusable, rotary_tables, rotate
from lori.model.precision import autocast_dtype

#: model types whose base model is LLaMA's: embed_tokens, decoder layers taking rotary tables, final norm
LLAMA_STYLE = ("llama", "qwen2", "qwen3", "mistral")


@functools.lru_cache(maxsize=None)
def _cache_keyword(model_cls: type) -> str:
    # transformers >= 5.2x renamed `past_key_values` to `cache` (the old name warns)
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def forward_cached(model, cache=None, **kwargs):
    """``model(**kwargs)`` continuing ``cache`` (None starts one); returns ``(output, new cache)``."""
    kwargs[_cache_keyword(type(model))] = cache
    out = model(use_cache=True, **kwargs)
    return out, (out.cache if hasattr(out, "cache") and out.cache is not None else out.past_key_values)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions for a left-padded block: ``cumsum(mask) - 1`` (pads get 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def llama_style(model, length: int) -> bool:
    """Whether :class:`Chain` may call ``model``'s decoder layers itself for a chain reaching
    ``length`` positions: a LLaMA-style model with full attention over that length (one mask
    serves every layer)."""
    cfg = getattr(model, "config", None)
    base = getattr(model, "model", None)
    if cfg is None or getattr(cfg, "model_type", None) not in LLAMA_STYLE or base is None:
        return False
    if not all(hasattr(base, name) for name in ("layers", "rotary_emb", "norm", "embed_tokens")):
        return False
    full = all(t == "full_attention" for t in (getattr(cfg, "layer_types", None) or ()))
    window = getattr(cfg, "sliding_window", None)
    return full and (window is None or window >= length)


@dataclass
class Step:
    hidden: torch.Tensor | None           # [B, d] last layer's state at the new position (after the final norm)
    states: list[torch.Tensor] | None     # [B, d] at each requested ``hidden_states`` index (0 = the input)
    logits: torch.Tensor | None           # [B, V] next-token logits


def prefill(model, ids: torch.Tensor, mask: torch.Tensor, hidden: bool = False):
    """Forward a left-padded prompt block; returns ``(cache, logits [B, V], hidden [B, d] | None)``
    at its last position (the only one a chain or a decoder reads, so the LM head runs there only)."""
    if llama_style(model, ids.shape[1]):
        cache, last = _prefill_layers(model, ids, mask)
        return cache, model.get_output_embeddings()(last), last
    out, cache = forward_cached(model, None, input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                                output_hidden_states=hidden, logits_to_keep=1)
    return cache, out.logits[:, -1], (out.hidden_states[-1][:, -1] if hidden else None)


def _prefill_layers(model, ids: torch.Tensor, mask: torch.Tensor):
    """A LLaMA-style prompt block through the decoder layers, the last one on the last position
    only: of the last layer nothing but its keys/values and its output at the last position is
    ever read, so its queries, attention and MLP on the other positions are skipped (forward, and
    backward for a chain fed from the last position). Returns ``(cache, final-normed state [B, d])``."""
    from transformers import DynamicCache
    from transformers.masking_utils import create_causal_mask

    base = model.model
    layers = decoder_layers(model)
    keyword = _cache_keyword(type(layers[0]))
    cache = DynamicCache(config=model.config)
    h = base.embed_tokens(ids)
    pos = position_ids(mask)
    causal = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=mask, cache=cache,
                                position_ids=pos)
    cos, sin = base.rotary_emb(h, pos)
    for layer in layers[:-1]:
        h = layer(h, attention_mask=causal, position_embeddings=(cos, sin), position_ids=pos, use_cache=True,
                  **{keyword: cache})
    last, attn = layers[-1], layers[-1].self_attn
    if h.shape[1] > 1:        # the last layer's keys/values of the positions before the last
        normed = last.input_layernorm(h[:, :-1])
        shape = (*normed.shape[:-1], -1, attn.head_dim)
        keys = attn.k_proj(normed).view(shape)
        if hasattr(attn, "k_norm"):          # Qwen3 normalises keys per head before the rotary map
            keys = attn.k_norm(keys)
        values = attn.v_proj(normed).view(shape).transpose(1, 2)
        cache.update(rotate(keys.transpose(1, 2), *rotary_tables(cos[:, :-1], sin[:, :-1])), values, len(layers) - 1)
    row = None if causal is None else causal[:, :, -1:]      # the mask's last query row, in its own format
    h = last(h[:, -1:], attention_mask=row, position_embeddings=(cos[:, -1:], sin[:, -1:]), position_ids=pos[:, -1:],
             use_cache=True, **{keyword: cache})
    return cache, base.norm(h[:, 0])


def start_chain(model, cache, mask: torch.Tensor, next_pos: torch.Tensor, steps: int, reserve: int = 0) -> "Chain":
    """Up to ``steps`` one-position forwards of ``model`` after a prefix: its KV ``cache`` (None:
    no prefix), attention ``mask`` [B, T0] and each row's next position ``next_pos`` [B].

    ``reserve``: positions the cache will grow by after the chain (a block through the model's
    forward, a decoder continuing it); without autograd the preallocated cache is sized for
    them too, so neither copies it again."""
    kind = _LlamaChain if llama_style(model, mask.shape[1] + steps) else _ModelChain
    return kind(model, cache, mask, next_pos, steps, reserve)


class Chain:
    """One-position steps after a prefix (made by :func:`start_chain`).

    Each :meth:`step` feeds an input embedding [B, d] or token ids [B]; :attr:`mask`,
    :attr:`next_pos` and :meth:`cache` describe the sequence so far, to continue it with a
    multi-token block through the model's forward.
    """

    def __init__(self, model, cache, mask: torch.Tensor, next_pos: torch.Tensor, steps: int):
        self.model, self.steps, self.n = model, steps, 0
        self.prefix = mask.shape[1]
        # the whole chain's mask and positions at once: a step only slices them
        self.full_mask = torch.cat([mask, mask.new_ones(mask.shape[0], steps)], dim=1)
        self.positions = next_pos[:, None] + torch.arange(steps + 1, device=next_pos.device)

    @property
    def mask(self) -> torch.Tensor:
        """Attention mask of the prefix and the steps taken [B, T0 + n]."""
        return self.full_mask[:, : self.prefix + self.n]

    @property
    def next_pos(self) -> torch.Tensor:
        """Position of the next token of each row [B]."""
        return self.positions[:, self.n]

    def step(self, embeds: torch.Tensor | None = None, ids: torch.Tensor | None = None,
             layers: list[int] | None = None, logits: bool = False, hidden: bool = True) -> Step:
        """One position: input ``embeds`` [B, d] or ``ids`` [B]; returns the last layer's state
        (``hidden``), the states at ``layers`` (``hidden_states`` indices) and the logits if asked."""
        if self.n >= self.steps:
            raise IndexError(f"the chain was sized for {self.steps} steps")
        out = self._step(embeds, ids, layers, logits, hidden)
        self.n += 1
        return out

    def cache(self):
        """The KV cache of the prefix and the steps taken, for the model's forward; ends the chain
        (the forward goes on writing into that cache)."""
        self.steps = self.n
        return self._end()

    def _end(self):
        raise NotImplementedError

    def _step(self, embeds, ids, layers, logits, hidden) -> Step:
        raise NotImplementedError


class _ModelChain(Chain):
    """Any causal LM: its own forward per step, on its own cache."""

    def __init__(self, model, cache, mask, next_pos, steps, reserve: int = 0):
        super().__init__(model, cache, mask, next_pos, steps)
        self._cache = cache          # the model's own cache grows as it does: nothing to reserve

    def _step(self, embeds, ids, layers, logits, hidden) -> Step:
        inputs = {"input_ids": ids[:, None]} if embeds is None else {"inputs_embeds": embeds[:, None]}
        need = hidden or layers is not None
        out, self._cache = forward_cached(self.model, self._cache, attention_mask=self.full_mask[:, : self.prefix + self.n + 1],
                                          position_ids=self.positions[:, self.n, None], output_hidden_states=need,
                                          **inputs)
        states = [out.hidden_states[l][:, -1] for l in layers] if layers is not None else None
        return Step(out.hidden_states[-1][:, -1] if hidden else None, states, out.logits[:, -1] if logits else None)

    def _end(self):
        return self._cache


@functools.lru_cache(maxsize=None)
def _preallocated_layer() -> type:
    """transformers' ``DynamicLayer`` writing into a buffer sized for the whole chain instead of
    concatenating (a copy of the layer's cache per step). Past its size it concatenates again.
    Built on first use: lori.model imports transformers lazily."""
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            start, stop = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
            if stop > self.key_buffer.shape[-2] or self.keys.data_ptr() != self.key_buffer.data_ptr():
                return super().update(key_states, value_states, *args, **kwargs)
            self.key_buffer[:, :, start:stop] = key_states
            self.value_buffer[:, :, start:stop] = value_states
            self.keys, self.values = self.key_buffer[:, :, :stop], self.value_buffer[:, :, :stop]
            return self.keys, self.values

    return PreallocatedLayer


def _preallocate(layer, capacity: int):
    """``layer``'s keys and values copied into a :func:`_preallocated_layer` of ``capacity`` positions
    (the layer itself if it is one with room for them). Only without autograd: a tensor saved for
    the backward pass cannot be written in place."""
    keys, values = layer.keys, layer.values
    filled = keys.shape[-2]
    if (isinstance(layer, _preallocated_layer()) and keys.data_ptr() == layer.key_buffer.data_ptr()
            and layer.key_buffer.shape[-2] >= capacity):
        return layer
    out = _preallocated_layer()()
    out.key_buffer = keys.new_empty((*keys.shape[:2], capacity, keys.shape[-1]))
    out.value_buffer = values.new_empty((*values.shape[:2], capacity, values.shape[-1]))
    out.key_buffer[:, :, :filled], out.value_buffer[:, :, :filled] = keys, values
    out.keys, out.values = out.key_buffer[:, :, :filled], out.value_buffer[:, :, :filled]
    out.device, out.is_initialized = keys.device, True
    return out


class _LlamaChain(Chain):
    """LLaMA-style decoders: the model's decoder layers called one after the other on the
    new position, with the mask, positions and rotary tables of the whole chain built once."""

    def __init__(self, model, cache, mask, next_pos, steps, reserve: int = 0):
        super().__init__(model, cache, mask, next_pos, steps)
        from transformers import DynamicCache

        base = model.model
        self.layers = decoder_layers(model)
        self.keyword = _cache_keyword(type(self.layers[0]))
        if cache is None:
            cache = DynamicCache(config=model.config)
        elif not torch.is_grad_enabled():
            cache.layers = [_preallocate(layer, self.prefix + steps + reserve) for layer in cache.layers]
        self._cache = cache
        # with autograd, one hand-written node per layer and step where it computes the same function
        # (none for a chain of no steps, No-CoT's: building its buffers would be wasted)
        self.fused = None
        if (torch.is_grad_enabled() and steps > 0 and self.prefix > 0 and cache.get_seq_length() == self.prefix
                and fusable(model, autocast=autocast_dtype(mask.device.type))):
            self.fused = FusedChainLayers(model, cache, mask, steps)
        # as the model's forward does: no mask when nothing is padded, else a boolean [B, 1, 1, T]
        self.attn_mask = None if bool(mask.all()) else self.full_mask.bool()[:, None, None, :]
        dtype = base.embed_tokens.weight.dtype
        self.cos, self.sin = base.rotary_emb(torch.empty(0, dtype=dtype, device=mask.device), self.positions[:, :steps])

    def _step(self, embeds, ids, layers, logits, hidden) -> Step:
        base, n = self.model.model, self.n
        if self.fused is not None:
            x = base.embed_tokens(ids) if embeds is None else embeds                # [B, d]
            h, states = self.fused.step(x, self.cos[:, n], self.sin[:, n], set(layers or ()))
            h = base.norm(h)
            states[0], states[len(self.layers)] = x, h
            head = self.model.get_output_embeddings()(h) if logits else None
            return Step(h, [states[l] for l in layers] if layers is not None else None, head)
        h = (base.embed_tokens(ids) if embeds is None else embeds)[:, None]    # [B, 1, d]
        mask = None if self.attn_mask is None else self.attn_mask[..., : self.prefix + n + 1]
        rotary = self.cos[:, n : n + 1], self.sin[:, n : n + 1]
        keep = set(layers or ())
        states = {0: h} if 0 in keep else {}
        for i, layer in enumerate(self.layers, start=1):
            h = layer(h, attention_mask=mask, position_embeddings=rotary, position_ids=self.positions[:, n : n + 1],
                      use_cache=True, **{self.keyword: self._cache})
            states[i] = h if i in keep else None
        h = base.norm(h)
        states[len(self.layers)] = h      # hidden_states' last entry is after the final norm, as in transformers 5
        head = self.model.get_output_embeddings()(h[:, 0]) if logits else None
        return Step(h[:, 0], [states[l][:, 0] for l in layers] if layers is not None else None, head)

    def _end(self):
        return self._cache if self.fused is None else self.fused.end()
