"""The streamed passes of the ``factorize`` stage, shardable over token ranges of one dump.

A factorization is a fixed sequence of passes over a hidden store's ``states``
(:func:`plan`):

    moments      token count, sums, sums of squares -> mean, per-layer scale   (only when centring/scaling)
    grams        the two mode Grams -> spectra, ranks, HOSVD factors
    hooi1..K     (method=hooi) one mode's Gram given the other factor -> refined factor, error
    diagnostics  per example: effective rank, CoT length, energy kept by the factors

Each pass is a *map* over shards (:func:`partial`: one accumulator per contiguous range of
examples, :func:`shard_ranges`) and a *reduce* (:func:`merge_all` sums the accumulators, then
:func:`finish` turns them into the next :class:`FactorState`). One process runs the
shards in turn; the Snakemake scatter/gather rules run each partial as its own job, through
small ``.npz`` files (:mod:`lori.artifacts.factor_state`). Both go through the same
functions, so sharded and unsharded results differ only by the order of float64 additions.

Everything here takes plain values (arrays, numbers, strings) and needs numpy only.
Peak memory: O(L^2 + d^2) accumulators plus one read chunk (``chunk_tokens`` float16 tokens),
converted to float64 in blocks of at most ``BLOCK_BYTES``.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Iterator, Union

import numpy as np

from lori.errors import ArtifactError
from lori.config import ConfigError
from lori.lowrank.maths import (
    ExampleDiagnostics,
    GramAccumulator,
    MomentAccumulator,
    ProjectedGramAccumulator,
    choose_rank,
    eig_desc,
    relative_error,
)
from lori.progress import tqdm  # tqdm that also writes lines into log files

log = logging.getLogger("lori.factorize")

BLOCK_BYTES = 64 << 20        # float64 working block: bounds memory whatever the read chunk
Accumulator = Union[MomentAccumulator, GramAccumulator, ProjectedGramAccumulator, ExampleDiagnostics]


# ---------------------------------------------------------------- the plan
def plan(method: str, hooi_iters: int, center: bool, layer_scaling: str) -> list[str]:
    """The passes, in order. Static given the ``factorize`` settings of the same names, so
    Snakemake can lay out the DAG. The moments pass runs only when it is needed: to centre
    (``center``) or to scale layers (``layer_scaling`` other than ``none``)."""
    steps = ["moments"] if center or layer_scaling != "none" else []
    steps.append("grams")
    if method == "hooi":
        steps += [f"hooi{k}" for k in range(1, hooi_iters + 1)]
    return steps + ["diagnostics"]


def hooi_mode(step: str) -> str:
    """Mode a HOOI pass updates: hidden first (where truncation loses most), then alternating."""
    return "hidden" if int(step[4:]) % 2 == 1 else "layer"


# ---------------------------------------------------------------- reading a dump in shards
@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    examples: tuple[int, int]      # [lo, hi)
    tokens: tuple[int, int]        # [offsets[lo], offsets[hi])


def shard_ranges(offsets: np.ndarray, num_shards: int) -> list[Shard]:
    """Contiguous example ranges with about equal numbers of tokens (whole examples per shard)."""
    n_ex, total = len(offsets) - 1, int(offsets[-1])
    cuts = [0]
    for k in range(1, num_shards):
        target = k * total / num_shards
        i = int(np.clip(np.searchsorted(offsets, target), 1, n_ex))  # example boundary nearest the target
        cuts.append(i - 1 if target - offsets[i - 1] < offsets[i] - target else i)
    cuts = np.maximum.accumulate(np.clip(cuts + [n_ex], 0, n_ex))
    return [Shard(i, num_shards, (int(cuts[i]), int(cuts[i + 1])), (int(offsets[cuts[i]]), int(offsets[cuts[i + 1]])))
            for i in range(num_shards)]


def read_chunks(states, lo: int, hi: int, chunk_tokens: int, path: str = "") -> Iterator[np.ndarray]:
    """Tokens ``lo..hi`` in order, read in pieces aligned with the store's chunk grid (so no
    stored chunk is decoded twice)."""
    grid = states.chunks[0]
    step = max(grid, chunk_tokens // grid * grid)
    start = lo
    while start < hi:
        end = min(hi, (start // step + 1) * step)
        try:
            yield np.asarray(states[start:end])
        except Exception as e:  # zarr raises several types for a damaged chunk
            raise ArtifactError(f"{path}: array 'states' unreadable at tokens {start}..{end} "
                                f"({type(e).__name__}: {e})") from None
        start = end


def float_blocks(chunk: np.ndarray) -> Iterator[np.ndarray]:
    """Row blocks of ``chunk`` whose float64 copy stays under ``BLOCK_BYTES``."""
    rows = max(1, BLOCK_BYTES // max(1, 8 * int(np.prod(chunk.shape[1:]))))
    for lo in range(0, len(chunk), rows):
        yield chunk[lo : lo + rows]


def iter_examples(states, offsets: np.ndarray, shard: Shard, chunk_tokens: int, path: str = "") -> Iterator[np.ndarray]:
    """Each example's states ``[n_i, L, d]`` of ``shard``, in order, from sequential chunk reads.

    Reading example by example would decode a stored chunk once per example in it; instead the
    tail of an example cut by a chunk boundary is carried over to the next chunk.
    """
    i, hi = shard.examples
    buf, buf_start = None, int(offsets[i])
    for chunk in read_chunks(states, *shard.tokens, chunk_tokens, path):
        buf = chunk if buf is None or len(buf) == 0 else np.concatenate([buf, chunk])
        end = buf_start + len(buf)
        while i < hi and offsets[i + 1] <= end:
            yield buf[offsets[i] - buf_start : offsets[i + 1] - buf_start]
            i += 1
        if i < hi:
            buf, buf_start = buf[offsets[i] - buf_start :], int(offsets[i])
    empty = np.zeros((0, *states.shape[1:]), dtype=states.dtype)
    for _ in range(i, hi):  # trailing examples without CoT tokens
        yield empty


# ---------------------------------------------------------------- state between passes
@dataclass
class FactorState:
    """What the passes so far have established (saved between Snakemake gather steps)."""
    steps: list[str] = field(default_factory=list)   # passes done
    tokens: int = 0
    mean: np.ndarray | None = None                   # [L, d]
    scale: np.ndarray | None = None                  # [L]
    spectrum_layer: np.ndarray | None = None         # [L] full mode-Gram eigenvalues, descending
    spectrum_hidden: np.ndarray | None = None        # [d]
    U_layer: np.ndarray | None = None                # [L, r_L]
    U_hidden: np.ndarray | None = None               # [d, r_d]
    total_energy: float = 0.0                        # ||X||^2 of the normalised data
    errors: list[float] = field(default_factory=list)  # relative error: HOSVD, then after each HOOI pass
    diagnostics: ExampleDiagnostics | None = None

    @property
    def energy_joint(self) -> float:
        """Fraction of the energy kept by the final (U_layer, U_hidden), measured per example."""
        d = self.diagnostics
        return float(d.energy_core.sum() / d.energy_total.sum()) if d is not None and d.energy_total.sum() > 0 else 1.0


def empty_accumulator(step: str, layers: int, hidden: int) -> Accumulator:
    """The zero of a streamed (chunk-by-chunk) pass."""
    if step == "moments":
        return MomentAccumulator()
    if step == "grams":
        return GramAccumulator.empty(layers, hidden)
    if step.startswith("hooi"):
        return ProjectedGramAccumulator.empty(hooi_mode(step), layers, hidden)
    raise ValueError(f"unknown factorize pass {step!r}")


def partial(step: str, state: FactorState, states, offsets: np.ndarray, shard: Shard, chunk_tokens: int,
            path: str = "") -> Accumulator:
    """Map: the accumulator of pass ``step`` over one shard, given the state before it."""
    _, layers, hidden = states.shape
    if step == "diagnostics":
        examples = iter_examples(states, offsets, shard, chunk_tokens, path)
        return ExampleDiagnostics.of_examples(shard.examples[0], examples, state.mean, state.scale,
                                              state.U_layer, state.U_hidden)
    acc = empty_accumulator(step, layers, hidden)
    mean, scale = _mean(state, layers, hidden), _scale(state, layers)
    chunks = read_chunks(states, *shard.tokens, chunk_tokens, path)
    for chunk in tqdm(chunks, desc=f"{step} [{shard.index + 1}/{shard.count}]", mininterval=5, disable=None):
        for block in float_blocks(chunk):
            if step == "moments":
                acc.update(block)
            elif step == "grams":
                acc.update(block, mean, scale)
            else:  # HOOI: project the mode that is not updated on its current factor
                acc.update(block, mean, scale, state.U_layer if acc.mode == "hidden" else state.U_hidden)
    return acc


def _mean(state: FactorState, layers: int, hidden: int) -> np.ndarray:
    return state.mean if state.mean is not None else np.zeros((layers, hidden))


def _scale(state: FactorState, layers: int) -> np.ndarray:
    return state.scale if state.scale is not None else np.ones(layers)


def merge_all(parts: list[Accumulator]) -> Accumulator:
    """Reduce: partial accumulators in shard order (diagnostics concatenate in that order)."""
    total = parts[0]
    for p in parts[1:]:
        total = total.merge(p)
    return total


def finish(step: str, state: FactorState, acc: Accumulator, *, center: bool, layer_scaling: str,
           rank_layer: int | None, rank_hidden: int | None, energy: float | None) -> FactorState:
    """Reduce: the state after pass ``step`` from its merged accumulator.

    The keywords are the ``factorize`` settings of the same names: the moments pass turns
    its sums into ``mean``/``scale`` by ``center``/``layer_scaling``; the grams pass keeps
    ``rank_layer``/``rank_hidden`` eigenvectors, or (None) the fewest reaching ``energy``.
    """
    new = dataclasses.replace(state, steps=[*state.steps, step], errors=list(state.errors))
    if step in ("moments", "grams") and acc.count == 0:
        raise ArtifactError("no tokens to factorize (empty dump)")
    if step == "moments":
        new.mean, new.scale = acc.transform(center, layer_scaling)
        new.tokens = acc.count
    elif step == "grams":
        layers, hidden = acc.gram_layer.shape[0], acc.gram_hidden.shape[0]
        new.mean, new.scale = _mean(state, layers, hidden), _scale(state, layers)
        new.spectrum_layer, vec_l = eig_desc(acc.gram_layer)
        new.spectrum_hidden, vec_d = eig_desc(acc.gram_hidden)
        r_l = rank_layer or choose_rank(new.spectrum_layer, energy)
        r_d = rank_hidden or choose_rank(new.spectrum_hidden, energy)
        if r_l > layers or r_d > hidden:
            raise ConfigError(f"rank ({r_l}, {r_d}) exceeds the dimensions (layer={layers}, hidden={hidden})")
        new.U_layer, new.U_hidden = vec_l[:, :r_l], vec_d[:, :r_d]
        new.tokens, new.total_energy = acc.count, acc.total_energy
    elif step.startswith("hooi"):
        name = "U_hidden" if acc.mode == "hidden" else "U_layer"
        old = getattr(state, name)
        if not new.errors:  # the first HOOI pass also measures the HOSVD pair exactly
            new.errors.append(relative_error(float(np.trace(old.T @ acc.gram @ old)), state.total_energy))
        vals, vecs = eig_desc(acc.gram)
        setattr(new, name, vecs[:, : old.shape[1]])
        new.errors.append(relative_error(float(vals[: old.shape[1]].sum()), state.total_energy))
        log.info("%s (%s mode): relative reconstruction error %.6g -> %.6g", step, acc.mode, new.errors[-2],
                 new.errors[-1])
    elif step == "diagnostics":
        new.diagnostics = acc
        if not new.errors:
            new.errors.append(relative_error(new.energy_joint * state.total_energy, state.total_energy))
    else:
        raise ValueError(f"unknown factorize pass {step!r}")
    return new
