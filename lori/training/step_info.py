"""Step-level information from the teacher, shared by every latent method that can take it.

*Step anchors* (our option, off in LoRi as the paper describes it): each CoT step of the teacher
is summarised by one state — the mean of its tokens, its last token, or the token that predicts
its result (``step_summary``) — and matched, in order, to one of the student's thoughts. The
same targets and the same loss serve LoRi, Coconut and CODI, so a table can give every method
the same information:

- ``space: core``: the summaries of the teacher's core trajectories (``targets/train.zarr``),
  the thoughts projected by the same factors;
- ``space: full``: the teacher's hidden states of the dumped layers, normalised as the factors
  normalise them (centred, divided by each layer's scale) but not projected — the same
  information without the low-rank subspace. Built by running the teacher over the training
  problems once (:func:`full_step_targets`).

Which thought a step is matched to (:meth:`StepTargets.slots`): step j of the n steps a batch
row covers goes to thought ``ceil((j+1) T / n) - 1`` of its T thoughts (the last of its even
share; :func:`lori.training.losses.step_slots`). Coconut's stage k covers the k steps its k*c
thoughts replace (so step j lands on the last of its own c thoughts); the final layout covers
every step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lori.lowrank.maths import Factors
from lori.model.sequences import equals_token, step_ids
from lori.training.losses import step_anchor_loss, step_slots, step_summaries

SPACES = ("core", "full")


@dataclass
class StepTargets:
    """One teacher state per CoT step of every training example.

    ``states`` [N, J, a, b] (padded with zeros to the longest J): core ``[r_L, r_d]`` or normalised
    full ``[L, d]``; ``count`` [N]: the steps each example has (0 = no CoT, never matched)."""
    states: torch.Tensor
    count: torch.Tensor
    space: str

    def to(self, device) -> "StepTargets":
        return StepTargets(self.states.to(device), self.count.to(device), self.space)

    def slots(self, idx: list[int], thoughts: int, covered: int | None = None) -> torch.Tensor:
        """[B, J] long: the thought each of the rows' steps is matched to, -1 = not matched
        (padding, or a step past the first ``covered`` ones)."""
        counts = self.count[idx].tolist()
        out = torch.full((len(idx), self.states.shape[1]), -1, dtype=torch.long)
        for row, n in enumerate(counts):
            n = n if covered is None else min(n, covered)
            if n > 0 and thoughts > 0:
                out[row, :n] = torch.tensor(step_slots(n, thoughts))
        return out.to(self.states.device)

    def loss(self, thought_states: torch.Tensor, idx: list[int], factors: Factors,
             covered: int | None = None, core: torch.Tensor | None = None) -> torch.Tensor:
        """``L_step`` of a batch: thought_states [B, T, L, d] (the student's hidden states at the
        factors' layers) mapped to this space, vs the rows' step targets (normalised squared error,
        :func:`lori.training.losses.step_anchor_loss`). 0 when every matched thought equals its target.
        ``core``: ``factors.project(thought_states)`` when the caller has it already (LoRi's L_reason)."""
        if self.space == "core":
            thoughts = factors.project(thought_states) if core is None else core
        else:
            thoughts = factors.normalize(thought_states)
        return step_anchor_loss(thoughts, self.states[idx], self.slots(idx, thought_states.shape[1], covered))


def fit_lengths(lengths: list[int], total: int) -> list[int]:
    """Step token counts rescaled to a trajectory of ``total`` tokens (a subword tokenizer may
    merge tokens across step boundaries, so the per-step counts need not sum to it exactly)."""
    if sum(lengths) == total:
        return lengths
    bounds = np.rint(np.cumsum([0] + lengths) * total / max(sum(lengths), 1)).astype(int)
    return [int(b - a) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def record_step_lengths(tokenizer, records) -> list[list[int]]:
    """Each record's CoT step token counts, as the teacher's trajectory tokenizes them."""
    return [[len(ids) for ids in step_ids(tokenizer, r.steps)] for r in records]


def record_step_points(tokenizer, records) -> list[list[int]]:
    """Each record's CoT steps' result tokens: in each step, the offset of the last token holding a
    "=" (``<<2-10=3>>``: the state that predicts 3), or the step's last token when it has none."""
    def point(ids: list[int]) -> int:
        eq = equals_token(tokenizer.convert_ids_to_tokens(ids))
        return len(ids) - 1 if eq is None else eq

    return [[point(ids) for ids in step_ids(tokenizer, r.steps)] for r in records]


def summarise_steps(trajectories, step_lengths: list[list[int]], summary: str,
                    step_points: list[list[int]] | None, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(states [N, J, *shape], count [N]) from each example's trajectory ``trajectories(i)`` [n_i, *shape]."""
    if summary == "result" and step_points is None:
        raise ValueError("step_summary 'result' needs each step's result token (record_step_points)")
    n_ex = len(step_lengths)
    width = max([len(s) for s in step_lengths] + [1])
    states = np.zeros((n_ex, width, *shape), np.float32)
    count = np.zeros(n_ex, np.int64)
    for i, lengths in enumerate(step_lengths):
        traj = trajectories(i)
        lengths = fit_lengths(lengths, len(traj))
        if len(traj) == 0 or not lengths:
            continue
        n = len(lengths)
        # fit_lengths keeps at most the record's steps, so a point per kept step is always there
        points = step_points[i][:n] if step_points is not None else None
        states[i, :n] = step_summaries(np.asarray(traj, np.float32), lengths, summary, points)
        count[i] = n
    return states, count


def core_step_targets(core: np.ndarray, offsets: np.ndarray, step_lengths: list[list[int]], summary: str = "mean",
                      step_points: list[list[int]] | None = None) -> StepTargets:
    """Step targets in the core, from a targets store's ragged ``core`` [tokens, r_L, r_d] and ``offsets``."""
    states, count = summarise_steps(lambda i: core[int(offsets[i]):int(offsets[i + 1])], step_lengths, summary,
                                    step_points, core.shape[1:])
    return StepTargets(torch.from_numpy(states), torch.from_numpy(count), "core")


@torch.no_grad()
def full_step_targets(teacher, tokenizer, records, factors: Factors, step_lengths: list[list[int]],
                      summary: str = "mean", step_points: list[list[int]] | None = None, batch_size: int = 64,
                      device="cpu") -> StepTargets:
    """Step targets in full space: the teacher's states at the factors' layers over its CoT,
    summarised per step and normalised by the factors (no projection). One teacher pass over
    ``records``; memory N x J x L x d float32."""
    from lori.model.trajectory import teacher_sequences, teacher_states

    if summary == "result" and step_points is None:
        raise ValueError("step_summary 'result' needs each step's result token (record_step_points)")
    sequences, offsets = teacher_sequences(tokenizer, records)
    teacher = teacher.to(device).eval()
    width = max([len(s) for s in step_lengths] + [1])
    states = np.zeros((len(records), width, len(factors.layers), factors.mean.shape[1]), np.float32)
    count = np.zeros(len(records), np.int64)
    # summarised batch by batch: the whole set's token states would not fit in memory on a real dataset
    for first, tokens, _ in teacher_states(teacher, tokenizer, sequences, factors.layers, batch_size, device):
        stop = min(first + batch_size, len(records))     # teacher_states' batches are batch_size examples
        tokens = tokens.cpu().numpy()
        base = int(offsets[first])
        part, part_count = summarise_steps(
            lambda i: tokens[int(offsets[first + i]) - base:int(offsets[first + i + 1]) - base],
            step_lengths[first:stop], summary, step_points[first:stop] if step_points is not None else None,
            tokens.shape[1:])
        states[first:stop, :part.shape[1]], count[first:stop] = part, part_count
    normalised = factors.to("cpu").normalize(torch.from_numpy(states))
    normalised[torch.from_numpy(count)[:, None] <= torch.arange(width)[None]] = 0   # padding stays 0
    return StepTargets(normalised, torch.from_numpy(count), "full")


def states_at(thought_states: torch.Tensor, layers: list[int], wanted: list[int]) -> torch.Tensor:
    """The thoughts' states at the ``wanted`` layers, from states [B, T, len(layers), d] taken at ``layers``."""
    if list(layers) == list(wanted):
        return thought_states
    missing = [l for l in wanted if l not in layers]
    if missing:
        raise ValueError(f"the student's states hold layers {layers}; the step targets need {missing}")
    return thought_states[:, :, [list(layers).index(l) for l in wanted]]
