"""The one training loop every recipe shares (teacher SFT and all students).

Methods differ only in their ``loss_step(indices) -> dict[str, Tensor]`` (key ``loss`` is
optimised; the rest are logged). AdamW, linear warmup then cosine to zero, gradient
clipping, seeded epoch-wise shuffling, a progress bar, ``metrics.jsonl`` rows, and a guard
that stops on a non-finite loss naming the step, the loss terms and the batch's examples.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from lori.precision import autocast_context, params_device

log = logging.getLogger("lori.train")


@dataclass
class OptimConfig:
    steps: int = 1000                    # optimizer steps
    batch_size: int = 64                 # examples per step
    lr: float = 1e-3                     # peak learning rate
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 30               # linear warmup, then cosine to 0
    grad_clip: float = 1.0               # max grad norm (0 = off)
    log_every: int = 50


class NonFiniteLoss(FloatingPointError):
    pass


def lr_lambda(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded epochs of shuffled example indices."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i : i + batch_size]


def fit(params: list[torch.nn.Parameter], loss_step: Callable[[list[int]], dict[str, torch.Tensor]],
        n_examples: int, cfg: OptimConfig, seed: int, metrics_path: str | Path | None = None,
        desc: str = "train") -> list[dict]:
    """Run ``cfg.steps`` optimizer steps; return the logged metric rows."""
    fused = all(p.is_cuda for p in params)
    device = params_device(params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.steps))
    rows, window, t0 = [], {}, time.perf_counter()
    stream = batches(n_examples, cfg.batch_size, seed)
    bar = tqdm(range(cfg.steps), desc=desc, mininterval=5, disable=None)
    for step in bar:
        idx = next(stream)
        with autocast_context(device):
            terms = loss_step(idx)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            values = {k: float(v.detach()) for k, v in terms.items()}
            raise NonFiniteLoss(f"non-finite loss at step {step}: {values}; batch example indices {idx[:16]}"
                                f"{' ...' if len(idx) > 16 else ''}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        for k, v in terms.items():
            window.setdefault(k, []).append(float(v.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, "lr": sched.get_last_lr()[0],
                   **{k: sum(v) / len(v) for k, v in window.items()},
                   "sec_per_step": (time.perf_counter() - t0) / (step + 1)}
            rows.append(row)
            window = {}
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            log.info("step %d %s", step + 1, " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
    if metrics_path is not None:
        from lori.io import atomic_write_text

        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
