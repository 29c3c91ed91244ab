"""iCoT-KD's vertical reasoning (Deng et al. 2023, "Implicit Chain of Thought Reasoning via Knowledge
Distillation"): states injected at the question's last position, one per layer.

- The teacher's *diagonal* (:func:`diagonal_positions`, :func:`teacher_diagonal`): layer l's input
  state at CoT position ``t_l = round(first + l (last - first) / (L - 1))``, from the question's
  last token (``first``) to the token before the answer (``last``), normalised per vector
  (LayerNorm without affine), as the paper's reference code extracts it.
- The *emulator* (:class:`Vertical.emulate`): a copy of the student's transformer (no LM head) run on
  the question; before each layer l, its state at the last position ``z_l`` and a mixture
  embedding go through an MLP to the emulated teacher state ``f_l``; ``f_l`` then goes through an
  LSTM across layers with attention over the previous layers' keys, and the result replaces the
  emulator's own state at that position (the reference code's emulator).
- The *mind-reading student* (:meth:`Vertical.substituting`): before each layer l of the student,
  its state at the question's last position is replaced by ``read_l(state_l)`` (an MLP per layer),
  from the teacher's diagonal (phase 1) or from the emulator (coupled, and at evaluation).

Prompts are left-padded (:mod:`lori.model.sequences`), so the question's last token is the last
column of every row: the hooks replace column -1 of whatever block a layer is called on (the whole
prompt, or the prompt's last position in :func:`lori.model.chain.prefill`'s last layer).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F


def decoder_blocks(model) -> list[nn.Module]:
    """The transformer blocks of a causal LM or its base model, in order (LLaMA-style or GPT-2)."""
    base = getattr(model, "base_model", model)
    for owner in (base, getattr(base, "model", None), getattr(base, "transformer", None)):
        for name in ("layers", "h"):
            blocks = getattr(owner, name, None) if owner is not None else None
            if isinstance(blocks, nn.ModuleList):
                return list(blocks[: model.config.num_hidden_layers])
    raise ValueError(f"{type(model).__name__}: no decoder layers found (LLaMA-style .layers or GPT-2 .h)")


def diagonal_positions(first: torch.Tensor, last: torch.Tensor, num_layers: int,
                       subset: str = "diagonal") -> torch.Tensor:
    """[B, L] teacher positions per layer. ``diagonal``: ``round(first + l (last - first) / (L - 1))``
    (torch.round: halves to even, as the reference); ``first_column``: ``first`` for every layer;
    ``last_column``: ``last``. Each row's own span (the reference takes the first row's step for the
    whole batch)."""
    layer = torch.arange(num_layers, device=first.device, dtype=torch.float64)
    if subset == "first_column":
        return first[:, None].expand(-1, num_layers).clone()
    if subset == "last_column":
        return last[:, None].expand(-1, num_layers).clone()
    if subset != "diagonal":
        raise ValueError(f"subset must be diagonal | first_column | last_column, got {subset!r}")
    delta = (last - first).double() / max(num_layers - 1, 1)
    pos = torch.round(first[:, None].double() + layer[None] * delta[:, None]).long()
    return torch.minimum(pos, last[:, None])


@torch.no_grad()
def teacher_diagonal(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, first: torch.Tensor,
                     last: torch.Tensor, subset: str = "diagonal") -> torch.Tensor:
    """[B, L, d] the teacher's normalised input state of each layer at its diagonal position, from
    one forward of the right-padded teacher sequences (``hidden_states[:-1]``: the embeddings, then
    each layer's output = the next layer's input)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    states = out.hidden_states[: model.config.num_hidden_layers]
    pos = diagonal_positions(first, last, len(states), subset)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    picked = torch.stack([h[rows, pos[:, l]] for l, h in enumerate(states)], dim=1).float()
    return F.layer_norm(picked, picked.shape[-1:])


def _mlp(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))


def _replace_last(h: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``h`` [B, T, d] with column -1 replaced by ``state`` [B, d] (out of place: autograd-safe)."""
    return torch.cat([h[:, :-1], state[:, None].to(h.dtype)], dim=1)


class Vertical(nn.Module):
    """The emulator and the student's reading MLPs of iCoT-KD (not the student's own transformer)."""

    def __init__(self, emulator: nn.Module, num_layers: int, hidden: int, mixture_size: int = 1,
                 mixture_temperature: float = 0.05):
        super().__init__()
        self.emulator = emulator                                   # a transformer without LM head
        self.num_layers, self.hidden = num_layers, hidden
        self.mixture_temperature = mixture_temperature
        self.heads = nn.ModuleList(_mlp(2 * hidden, hidden) for _ in range(num_layers))   # [z_l, mixture] -> f_l
        self.mixture = nn.Embedding(mixture_size, hidden)
        self.rnn = nn.LSTM(hidden, hidden)
        self.key, self.query = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Linear(2 * hidden, hidden)
        self.read = nn.ModuleList(_mlp(hidden, hidden) for _ in range(num_layers))         # student: state_l -> input

    @classmethod
    def from_model(cls, model, mixture_size: int = 1, mixture_temperature: float = 0.05) -> "Vertical":
        """An emulator initialised as a copy of ``model``'s transformer (its weights now)."""
        emulator = copy.deepcopy(model.base_model)
        hidden = model.get_input_embeddings().weight.shape[1]
        return cls(emulator, model.config.num_hidden_layers, hidden, mixture_size, mixture_temperature)

    @classmethod
    def from_config(cls, config, mixture_size: int, mixture_temperature: float) -> "Vertical":
        """Untrained, to receive saved weights."""
        from transformers import AutoModel

        return cls(AutoModel.from_config(config), config.num_hidden_layers, config.hidden_size, mixture_size,
                   mixture_temperature)

    # ------------------------------------------------------------------ emulator
    def _mixture(self, z: torch.Tensor) -> torch.Tensor:
        weight = self.mixture.weight                                            # [M, d]
        if self.mixture_size == 1:
            return weight.expand(z.shape[0], -1)
        probs = (z @ weight.T / self.mixture_temperature).softmax(-1)
        return probs @ weight

    def emulate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """[B, L, d] emulated teacher states from the left-padded question block."""
        emulated: list[torch.Tensor] = []
        carry: dict = {"rnn": None, "keys": None, "context": None}

        def hook(layer: int):
            def pre(module, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                z = h[:, -1]
                f = self.heads[layer](torch.cat([z, self._mixture(z).to(z.dtype)], dim=-1))
                emulated.append(f)
                context = carry["context"] if carry["context"] is not None else torch.zeros_like(f)
                o, carry["rnn"] = self.rnn((f + context)[None], carry["rnn"])
                o = o[0]
                key = self.key(o)
                if carry["keys"] is not None:     # attend over the previous layers' keys (unscaled, as the reference)
                    probs = torch.bmm(carry["keys"], self.query(o)[:, :, None]).softmax(dim=1)   # [B, l, 1]
                    context = (probs * carry["keys"]).sum(1)
                    carry["keys"] = torch.cat([carry["keys"], key[:, None]], dim=1)
                else:
                    carry["keys"] = key[:, None]
                carry["context"] = context
                h = _replace_last(h, self.out(torch.cat([o, context], dim=-1)))
                return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
            return pre

        from lori.model.chain import position_ids

        with _hooks(decoder_blocks(self.emulator), hook):
            self.emulator(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask))
        return torch.stack(emulated, dim=1)

    # ------------------------------------------------------------------ student side
    @contextmanager
    def substituting(self, model, states: torch.Tensor) -> Iterator[None]:
        """While inside, ``model``'s layer l reads ``read_l(states[:, l])`` at its block's last
        column instead of its own state there. ``states``: [B, L, d] teacher or emulated states."""
        mapped = [self.read[l](states[:, l]) for l in range(self.num_layers)]

        def hook(layer: int):
            def pre(module, args, kwargs):
                if args:
                    return (_replace_last(args[0], mapped[layer]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": _replace_last(kwargs["hidden_states"], mapped[layer])}
            return pre

        with _hooks(decoder_blocks(model), hook):
            yield

    @property
    def mixture_size(self) -> int:
        return self.mixture.weight.shape[0]

    def reading_params(self) -> int:
        return sum(p.numel() for p in self.read.parameters())

    def emulator_params(self) -> int:
        """Parameters a step through the emulator touches (transformer, heads, mixture, LSTM, attention)."""
        return sum(p.numel() for p in self.parameters()) - self.reading_params()


@contextmanager
def _hooks(blocks: list[nn.Module], make) -> Iterator[None]:
    handles = [b.register_forward_pre_hook(make(l), with_kwargs=True) for l, b in enumerate(blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
