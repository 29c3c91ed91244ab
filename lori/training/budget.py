"""Training FLOPs planned before training: a student's total from its recipe and its batch stream.

A step's FLOPs are ``6 x parameters x positions`` of the batch it draws (each recipe's ``flops``
term, :func:`lori.training.loop.step_flops`), so a run's total is known from the data: replay the
schedule (``on_step``) and the seeded batch stream, and read the ``flops`` term of the steps'
loss (forward only, no gradients, no optimizer). With ``samples`` the loss runs on that many
steps spread evenly over the run and the mean stands for every step (a curriculum's stages are
sampled in proportion to their length). Used to give every cell of a comparison the same
training compute before any of them trains (``bench/flops_plan.py``).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch


def planned_flops(loss_step: Callable[[list[int]], dict[str, torch.Tensor]], on_step: Callable[[int], bool] | None,
                  stream: Iterator[list[int]], steps: int, samples: int | None = None) -> tuple[float, float]:
    """(total FLOPs of ``steps`` steps, mean FLOPs per sampled step). ``samples`` = None: every step
    (exact: the total a training run logs, :func:`lori.sweep.total_flops`)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    chosen = set(range(steps)) if samples is None or samples >= steps else \
        set(np.linspace(0, steps - 1, samples).round().astype(int).tolist())
    per_step = []
    with torch.no_grad():
        for step, idx in zip(range(steps), stream):
            if on_step is not None:
                on_step(step)
            if step in chosen:
                per_step.append(float(loss_step(idx)["flops"]))
    if len(per_step) < len(chosen):
        raise ValueError(f"the batch stream ended after {len(per_step)} of {len(chosen)} sampled steps")
    mean = float(np.mean(per_step))
    return (float(np.sum(per_step)) if samples is None or samples >= steps else mean * steps), mean
