"""Teacher hidden-state trajectories, read teacher-forced over the teacher's own CoT.

Shared by ``dump_hidden`` (full-resolution states of a calibration set) and ``targets``
(core trajectories of every training example). A trajectory is the teacher's hidden
states at the CoT token positions, for the selected layers: ``[n_i, L, d]``; the anchor is
the state at the position that predicts the first answer token.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from lori.progress import tqdm   # tqdm that also writes lines into log files

import lori
from lori.data.records import Record, iter_batches
from lori.artifacts.store import ArtifactError, atomic_path, zarr_create, zarr_put
from lori.lowrank.maths import Factors
from lori.model.precision import autocast_context
from lori.model.sequences import TeacherSequence, teacher_batch, teacher_sequence

ANCHOR_POSITIONS = ["answer_start"]
log = logging.getLogger("lori.model.trajectory")


def check_factors_fit(factors: Factors, factors_path: str | Path, model_config, model_path: str | Path) -> None:
    """Refuse factors of another architecture: their hidden size and layers must exist in the model."""
    hidden, n_layers = model_config.hidden_size, model_config.num_hidden_layers
    if factors.mean.shape[1] != hidden:
        raise ArtifactError(f"{factors_path}: factors of hidden size {factors.mean.shape[1]}, but {model_path} "
                            f"has hidden size {hidden} (factors from another model?)")
    if not factors.layers or max(factors.layers) > n_layers or len(factors.layers) != factors.mean.shape[0]:
        raise ArtifactError(f"{factors_path}: factor layers {factors.layers} (for {factors.mean.shape[0]} layers) "
                            f"do not fit {model_path} ({n_layers} layers; hidden_states indices 0..{n_layers})")


@torch.no_grad()
def teacher_states(model, tokenizer, sequences: list[TeacherSequence], layers: list[int], batch_size: int,
                   device) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per batch: the trajectories ``[n_i, L, d]`` and anchors ``[B, 1, L, d]`` (float32, on device)."""
    for seqs in tqdm(list(iter_batches(sequences, batch_size)), desc="teacher states", mininterval=5, disable=None):
        inputs = teacher_batch(tokenizer, seqs)
        with autocast_context(device):
            out = model(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device),
                        output_hidden_states=True)
        states = torch.stack([out.hidden_states[l] for l in layers], dim=2).float()   # [B, T, L, d]
        rows = torch.arange(len(seqs), device=states.device)
        anchors = states[rows, torch.tensor([s.anchor for s in seqs], device=states.device)][:, None]
        trajectories = [states[i, s.prompt_len : s.prompt_len + s.cot_len] for i, s in enumerate(seqs)]
        yield trajectories, anchors


def check_disk_space(out: str | Path, needed: int) -> None:
    """Say how much a store will take before writing it, and stop early if it cannot fit."""
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    log.info("%s will take about %.1f MiB (%.1f GiB free)", out, needed / 2**20, free / 2**30)
    if needed > 0.95 * free:
        raise ArtifactError(f"{out}: needs about {needed / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB is free "
                            f"on {parent}; dump fewer examples (dump_hidden.calibration_size) or layers")


def token_chunk(tokens: int, n_layers: int, hidden: int) -> int:
    """Tokens per stored chunk of a trajectory array (~16 MiB of float32 per chunk)."""
    return max(1, min(tokens or 1, (16 << 20) // (n_layers * hidden * 4)))


def create_states(group, tokens: int, n_layers: int, hidden: int):
    """The hidden store's ``states`` float16 ``[token, layer, hidden]`` (DESIGN.md §5)."""
    return zarr_create(group, "states", (tokens, n_layers, hidden), "float16", ["token", "layer", "hidden"],
                       chunks=(token_chunk(tokens, n_layers, hidden), n_layers, hidden))


def create_anchors(group, examples: int, n_layers: int, hidden: int):
    """``anchors`` float16 ``[example, anchor, layer, hidden]`` at :data:`ANCHOR_POSITIONS`."""
    return zarr_create(group, "anchors", (examples, 1, n_layers, hidden), "float16",
                       ["example", "anchor", "layer", "hidden"], chunks=(max(1, min(examples, 256)), 1, n_layers, hidden),
                       positions=ANCHOR_POSITIONS)


def write_trajectories(out: str | Path, model, tokenizer, records: list[Record], layers: list[int],
                       batch_size: int, device, attrs: dict, factors: Factors | None = None) -> dict:
    """Stream trajectories of ``records`` into a Zarr store, atomically.

    Without ``factors`` (dump_hidden): ``states`` float16 [tokens, L, d] and ``anchors``.
    With ``factors`` (targets): ``core`` float32 [tokens, r_L, r_d], ``anchors_core`` and
    the full-space ``anchors`` (for full-space anchor losses).
    """
    import zarr

    sequences = [teacher_sequence(tokenizer, r) for r in records]     # tokenized once: lengths, then batches
    lengths = np.array([s.cot_len for s in sequences], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n_layers, hidden = len(layers), model.config.hidden_size
    per_token = (n_layers * hidden * 2) if factors is None else (factors.ranks[0] * factors.ranks[1] * 4)
    check_disk_space(out, int(offsets[-1]) * per_token + len(records) * n_layers * hidden * 2)
    with atomic_path(out) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        group.attrs.update({**attrs, "layers": layers, "anchor_positions": ANCHOR_POSITIONS,
                            "lori_version": lori.__version__, "examples": len(records), "tokens": int(offsets[-1])})
        zarr_put(group, "offsets", offsets, ["example_plus_one"])
        zarr_put(group, "example_id", np.array([r.id for r in records], dtype=str), ["example"])
        anchors = create_anchors(group, len(records), n_layers, hidden)
        tok_chunk = token_chunk(int(offsets[-1]), n_layers, hidden)
        if factors is None:
            main = create_states(group, int(offsets[-1]), n_layers, hidden)
        else:
            rl, rd = factors.ranks
            main = zarr_create(group, "core", (int(offsets[-1]), rl, rd), "float32",
                               ["token", "rank_layer", "rank_hidden"], chunks=(tok_chunk, rl, rd))
            anchors_core = zarr_create(group, "anchors_core", (len(records), 1, rl, rd), "float32",
                                       ["example", "anchor", "rank_layer", "rank_hidden"], positions=ANCHOR_POSITIONS)
            factors = factors.to(device)
        ex = 0
        for trajectories, anchor_states in teacher_states(model, tokenizer, sequences, layers, batch_size, device):
            b = len(trajectories)
            flat = torch.cat(trajectories) if trajectories else anchor_states[:0, 0]
            lo, hi = int(offsets[ex]), int(offsets[ex + b])
            if factors is None:
                main[lo:hi] = flat.cpu().numpy().astype(np.float16)
            else:
                main[lo:hi] = factors.project(flat).cpu().numpy()
                anchors_core[ex : ex + b] = factors.project(anchor_states).cpu().numpy()
            anchors[ex : ex + b] = anchor_states.cpu().numpy().astype(np.float16)
            ex += b
    return {"examples": len(records), "tokens": int(offsets[-1]),
            "mean_cot_tokens": float(lengths.mean()) if len(lengths) else 0.0}
