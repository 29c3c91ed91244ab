"""Teacher hidden-state trajectories, read teacher-forced over the teacher's own CoT.

Shared by ``dump_hidden`` (full-resolution states of a calibration set, stored by
:mod:`lori.artifacts.hidden`) and ``targets`` (core trajectories of every training example,
stored by :mod:`lori.artifacts.targets`). A trajectory is the teacher's hidden states at the
CoT token positions, for the selected layers: ``[n_i, L, d]``; the anchor is the state at the
position that predicts the first answer token. Nothing here writes to disk.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from lori.data.records import Record, iter_batches
from lori.model.precision import autocast_context
from lori.model.sequences import TeacherSequence, teacher_batch, teacher_sequence
from lori.progress import tqdm  # tqdm that also writes lines into log files


def teacher_sequences(tokenizer, records: list[Record]) -> tuple[list[TeacherSequence], np.ndarray]:
    """Each record tokenized once, and the ``offsets`` int64 ``[examples + 1]`` of their CoT
    tokens concatenated (example i owns ``[offsets[i], offsets[i+1])``)."""
    sequences = [teacher_sequence(tokenizer, r) for r in records]
    lengths = np.array([s.cot_len for s in sequences], dtype=np.int64)
    return sequences, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@torch.no_grad()
def teacher_states(model, tokenizer, sequences: list[TeacherSequence], layers: list[int], batch_size: int,
                   device) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per batch: the index of its first example, its trajectories concatenated in example
    order ``[tokens, L, d]`` and its anchors ``[B, 1, L, d]`` (float32, on device)."""
    first = 0
    for seqs in tqdm(list(iter_batches(sequences, batch_size)), desc="teacher states", mininterval=5, disable=None):
        inputs = teacher_batch(tokenizer, seqs)
        with autocast_context(device):
            out = model(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device),
                        output_hidden_states=True)
        states = torch.stack([out.hidden_states[l] for l in layers], dim=2).float()   # [B, T, L, d]
        rows = torch.arange(len(seqs), device=states.device)
        anchors = states[rows, torch.tensor([s.anchor for s in seqs], device=states.device)][:, None]
        trajectories = torch.cat([states[i, s.prompt_len : s.prompt_len + s.cot_len] for i, s in enumerate(seqs)])
        yield first, trajectories, anchors
        first += len(seqs)
