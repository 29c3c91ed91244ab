"""The latent-reasoning student: K continuous thoughts fed back through a projection MLP.

After ``question || <bot>`` the model's last hidden state goes through
``Linear -> GELU -> Linear -> LayerNorm`` and becomes the next *input embedding*, K times;
then ``<eot> ####`` and the answer. The chain runs on the KV cache, one position per
thought for the whole batch, and gradients flow through it (no recompute).

``feedback: hidden`` (Coconut) feeds the last hidden state back unchanged, with no
projection. ``feedback: pause`` (the pause-token control, Goyal et al. 2023) feeds nothing back:
thought k's input is a learned embedding ``pause[k]`` (a [K, d] parameter), the same for every
question. ``latent_steps = 0`` is the No-CoT student: ``question || #### answer``; with a
``vertical`` module (iCoT-KD, :mod:`lori.model.vertical`) its prompt block reads emulated states
at the question's last position in every layer, and ``vertical.safetensors`` holds the emulator.
``latent.json`` records K and the feedback, so evaluation needs nothing method-specific.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from lori.artifacts.store import ArtifactError
from lori.data.records import BOT, EOT
from lori.model.chain import forward_cached, prefill, start_chain
from lori.model.generate import Generation, greedy_continue
from lori.model.loading import load_checkpoint, save_checkpoint
from lori.model.sequences import StudentBatch


class Projection(nn.Module):
    """Maps a last-layer hidden state to the next input embedding."""

    def __init__(self, hidden: int, out_scale: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)
        with torch.no_grad():
            # LayerNorm outputs have RMS ~1 while token embeddings may be ~0.02-0.1: start at
            # the embedding scale so thoughts look like inputs from the first step.
            self.norm.weight.fill_(out_scale)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(h))


@dataclass
class StudentOutput:
    task_loss: torch.Tensor                 # answer cross-entropy
    thoughts: torch.Tensor | None           # [B, K, L, d] hidden states at the thought positions
    anchor: torch.Tensor | None             # [B, L, d] hidden states at the anchor position
    inputs: torch.Tensor | None = None      # [B, K, d] the thoughts' input embeddings (forward(keep_inputs=True))


Feedback = Literal["projection", "hidden", "pause"]
FEEDBACKS = ("projection", "hidden", "pause")


def init_pause(model, latent_steps: int) -> torch.Tensor:
    """K filler input embeddings [K, d], drawn like token embeddings: normal with the std of the
    model's input-embedding weights (torch's global generator, so the run's seed fixes them)."""
    emb = model.get_input_embeddings().weight.detach()
    std = float(emb.float().std())
    return torch.randn(latent_steps, emb.shape[1], device=emb.device).mul_(std).to(emb.dtype)


class LatentStudent(nn.Module):
    def __init__(self, model, latent_steps: int, bot_id: int, eot_id: int, projection: Projection | None = None,
                 feedback: Feedback = "projection", pause: torch.Tensor | None = None, vertical: nn.Module | None = None):
        super().__init__()
        if feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be {' | '.join(FEEDBACKS)}, got {feedback!r}")
        self.model = model
        self.latent_steps = latent_steps
        self.bot_id, self.eot_id = bot_id, eot_id
        self.feedback = feedback
        if feedback in ("hidden", "pause"):
            projection = None        # Coconut: the last hidden state is the next input embedding; pause: none fed
        elif projection is None and latent_steps > 0:
            emb = model.get_input_embeddings().weight
            projection = Projection(emb.shape[1], out_scale=float(emb.detach().pow(2).mean().sqrt()))
        self.projection = projection
        # pause: thought k's input is pause[k] whatever the question (None for the other feedbacks)
        if feedback == "pause" and latent_steps > 0:
            pause = init_pause(model, latent_steps) if pause is None else pause
            d = model.get_input_embeddings().weight.shape[1]
            if tuple(pause.shape) != (latent_steps, d):
                raise ValueError(f"pause embeddings must be [{latent_steps}, {d}], got {list(pause.shape)}")
        else:
            pause = None
        self.register_parameter("pause", nn.Parameter(pause) if pause is not None else None)
        # iCoT-KD (lori.model.vertical): emulator + reading MLPs; the prompt block reads their states
        self.add_module("vertical", vertical)

    # ------------------------------------------------------------------ forward
    def _feed(self, last: torch.Tensor) -> torch.Tensor:
        return last if self.projection is None else self.projection(last)

    def _think(self, prompt_ids, prompt_mask, layers: list[int] | None, thought_inputs: torch.Tensor | None = None,
               record_inputs: list | None = None, latent_steps: int | None = None, reserve: int = 0,
               diagonal: torch.Tensor | None = None):
        """Prompt block then K thoughts on the cache (K = ``latent_steps``, default the student's).
        Returns cache, mask, next positions, logits after the last input, and the thoughts'
        hidden states [B, K, L, d] (if layers).

        ``thought_inputs`` [B, K, d] replaces the thoughts' input embeddings (the thought-shuffle
        test feeds one problem another problem's thoughts); ``record_inputs`` collects the
        input embeddings actually fed, one [B, d] tensor per thought. ``reserve``: positions the
        cache grows by afterwards (see :func:`lori.model.chain.start_chain`). An iCoT-KD student
        (``self.vertical``) reads ``diagonal`` [B, L, d] (the teacher's states) or, when None, its
        emulator's at the prompt's last position in every layer."""
        n_thoughts = self.latent_steps if latent_steps is None else latent_steps
        # the LM head runs on the prompt's last position only: a [B, P, vocab] head would be thrown away
        if self.pause is not None and n_thoughts > self.pause.shape[0]:
            raise ValueError(f"{n_thoughts} thoughts asked of a pause student with {self.pause.shape[0]} pause embeddings")
        # pause students read no hidden state
        if self.vertical is not None:
            states = self.vertical.emulate(prompt_ids, prompt_mask) if diagonal is None else diagonal
            with self.vertical.substituting(self.model, states):
                past, logits, last = prefill(self.model, prompt_ids, prompt_mask, hidden=n_thoughts > 0)
        else:
            past, logits, last = prefill(self.model, prompt_ids, prompt_mask,
                                         hidden=n_thoughts > 0 and self.pause is None)
        chain = start_chain(self.model, past, prompt_mask, prompt_mask.sum(1), n_thoughts, reserve)
        thought_states = []
        for k in range(n_thoughts):
            if thought_inputs is not None:
                embeds = thought_inputs[:, k]                                            # [B, d]
            elif self.pause is not None:              # pause: the k-th learned filler, whatever was computed
                embeds = self.pause[k].expand(prompt_ids.shape[0], -1)
            else:
                embeds = self._feed(last)
            if record_inputs is not None:
                record_inputs.append(embeds)
            # logits only after the last thought: no loss reads the others
            step = chain.step(embeds, layers=layers, logits=k == n_thoughts - 1)
            last, logits = step.hidden, (step.logits if step.logits is not None else logits)
            if layers is not None:
                thought_states.append(torch.stack(step.states, dim=1))
        thoughts = torch.stack(thought_states, dim=1) if thought_states else None  # [B, K, L, d]
        return chain.cache(), chain.mask, chain.next_pos, logits, thoughts

    def forward(self, batch: StudentBatch, layers: list[int] | None = None,
                latent_steps: int | None = None, keep_inputs: bool = False,
                diagonal: torch.Tensor | None = None, anchor: bool = True) -> StudentOutput:
        """Training forward: CE on ``suffix[answer_start:]``, plus thought/anchor states at ``layers``
        when given. ``latent_steps`` overrides K for this batch (Coconut's curriculum stages);
        ``keep_inputs`` also returns the thoughts' input embeddings, in the graph (SIM-CoT decodes them);
        ``diagonal``: iCoT-KD's teacher states in place of its emulator's (:meth:`_think`);
        ``anchor=False``: no answer-block states (a caller that reads only the thoughts' skips them)."""
        fed: list[torch.Tensor] | None = [] if keep_inputs else None
        past, mask, pos, _, thoughts = self._think(batch.prompt_ids, batch.prompt_mask, layers, record_inputs=fed,
                                                   latent_steps=latent_steps, diagonal=diagonal)
        suffix_len = batch.suffix_ids.shape[1]
        out, _ = forward_cached(self.model, past, input_ids=batch.suffix_ids,
                                attention_mask=torch.cat([mask, batch.suffix_mask], dim=1),
                                position_ids=pos[:, None] + torch.arange(suffix_len, device=pos.device),
                                output_hidden_states=layers is not None and anchor)
        a = batch.answer_start
        logits = out.logits[:, a - 1 : -1]                                       # predict suffix[a:]
        targets = batch.suffix_ids[:, a:].masked_fill(batch.suffix_mask[:, a:] == 0, -100)
        task = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
        states = torch.stack([out.hidden_states[l][:, a - 1] for l in layers], dim=1) \
            if layers is not None and anchor else None
        inputs = torch.stack(fed, dim=1) if fed else None
        return StudentOutput(task, thoughts, states, inputs)

    @torch.no_grad()
    def thought_inputs(self, batch: StudentBatch) -> torch.Tensor:
        """The K input embeddings the student feeds itself on ``batch``: [B, K, d]."""
        fed: list[torch.Tensor] = []
        self._think(batch.prompt_ids, batch.prompt_mask, None, record_inputs=fed)
        if not fed:
            raise ValueError("a student without latent steps has no thoughts")
        return torch.stack(fed, dim=1)

    @torch.no_grad()
    def generate(self, batch: StudentBatch, max_new_tokens: int, tokenizer,
                 thought_inputs: torch.Tensor | None = None) -> list[Generation]:
        """Greedy answers: thoughts, then the forced ``<eot> ####``, then decode to <eos>.

        ``thought_inputs`` [B, K, d] overrides the thoughts (see :meth:`thought_inputs`).
        Runs in the model's dtype without autocast (see :func:`lori.model.generate.generate_cot`)."""
        start = time.perf_counter()
        head = batch.suffix_ids[:, : batch.answer_start]
        # the cache is sized once for the thoughts, the forced head and the answer
        past, mask, pos, _, _ = self._think(batch.prompt_ids, batch.prompt_mask, None, thought_inputs,
                                            reserve=head.shape[1] + max_new_tokens)
        mask = torch.cat([mask, torch.ones_like(head)], dim=1)
        out, past = forward_cached(self.model, past, input_ids=head, attention_mask=mask,
                                   position_ids=pos[:, None] + torch.arange(head.shape[1], device=pos.device))
        rows = greedy_continue(self.model, past, mask, pos + head.shape[1], out.logits[:, -1],
                               max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
        per = (time.perf_counter() - start) / len(rows)
        prefix = tokenizer.decode(head[0].tolist(), skip_special_tokens=True)
        return [Generation(prefix + tokenizer.decode(r, skip_special_tokens=True), len(r), per) for r in rows]

    # ------------------------------------------------------------------ checkpoints
    def save(self, out: str | Path, tokenizer, extra_files: dict[str, str] | None = None) -> None:
        meta = {"latent_steps": self.latent_steps, "feedback": self.feedback}
        if self.vertical is not None:
            meta["vertical"] = {"mixture_size": self.vertical.mixture_size,
                                "mixture_temperature": self.vertical.mixture_temperature}
        files = {"latent.json": json.dumps(meta, indent=2), **(extra_files or {})}
        tensors = {"projection.safetensors": self.projection.state_dict()} if self.projection is not None else {}
        if self.pause is not None:
            tensors["pause.safetensors"] = {"pause": self.pause}
        if self.vertical is not None:
            tensors["vertical.safetensors"] = self.vertical.state_dict()
        save_checkpoint(out, self.model, tokenizer, files, tensors)

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        model, tokenizer = load_checkpoint(path)
        meta_path = path / "latent.json"
        if not meta_path.exists():
            raise ArtifactError(f"{path}: not a student checkpoint (no latent.json)")
        meta = json.loads(meta_path.read_text())
        latent_steps = int(meta["latent_steps"])
        feedback = meta.get("feedback", "projection")      # checkpoints older than Coconut have none
        if feedback not in FEEDBACKS:
            raise ArtifactError(f"{meta_path}: feedback must be {' | '.join(FEEDBACKS)}, got {feedback!r}")
        projection = None
        if latent_steps > 0 and feedback == "projection":
            projection = Projection(model.get_input_embeddings().weight.shape[1])
            try:
                projection.load_state_dict(load_file(str(path / "projection.safetensors")))
            except Exception as e:  # missing, truncated, or trained for another hidden size
                raise ArtifactError(f"{path}: projection.safetensors does not fit this model (hidden size "
                                    f"{projection.norm.weight.shape[0]}): {type(e).__name__}: "
                                    f"{' '.join(l.strip() for l in str(e).splitlines()[:2])}") from None
        pause = None
        if latent_steps > 0 and feedback == "pause":
            d = model.get_input_embeddings().weight.shape[1]
            try:
                pause = load_file(str(path / "pause.safetensors"))["pause"]
            except Exception as e:  # missing, truncated, or without the "pause" tensor
                raise ArtifactError(f"{path}: pause.safetensors is missing or unreadable (a pause student needs its "
                                    f"{latent_steps} x {d} pause embeddings): {type(e).__name__}: "
                                    f"{' '.join(l.strip() for l in str(e).splitlines()[:2])}") from None
            if tuple(pause.shape) != (latent_steps, d):
                raise ArtifactError(f"{path}: pause.safetensors holds {list(pause.shape)} pause embeddings; latent.json "
                                    f"and this model need [{latent_steps}, {d}]")
        vertical = _load_vertical(path, model, meta["vertical"]) if meta.get("vertical") else None
        student = cls(model, latent_steps, tokenizer.convert_tokens_to_ids(BOT), tokenizer.convert_tokens_to_ids(EOT),
                      projection, feedback, pause.to(model.get_input_embeddings().weight.dtype) if pause is not None else None,
                      vertical)
        return student, tokenizer


def _load_vertical(path: Path, model, meta: dict) -> nn.Module:
    """iCoT-KD's emulator and reading MLPs from ``vertical.safetensors`` (shaped by the student's config)."""
    from lori.model.vertical import Vertical

    vertical = Vertical.from_config(model.config, int(meta["mixture_size"]), float(meta["mixture_temperature"]))
    try:
        vertical.load_state_dict(load_file(str(path / "vertical.safetensors")))
    except Exception as e:  # missing, truncated, or for another architecture
        raise ArtifactError(f"{path}: vertical.safetensors is missing or does not fit this model (an iCoT-KD student "
                            f"needs its emulator and reading MLPs): {type(e).__name__}: "
                            f"{' '.join(l.strip() for l in str(e).splitlines()[:2])}") from None
    return vertical.to(model.get_input_embeddings().weight.dtype)
