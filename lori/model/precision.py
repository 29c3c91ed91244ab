"""Numeric precision per device: fp32 on CPU, bf16 autocast on CUDA.

Weights and optimizer state stay fp32 (master weights); autocast runs matmuls and attention
in bf16 on the GPU for training steps and teacher-forced passes (dump_hidden, targets).
Greedy decoding does not use it (autocast re-casts the weights at every token). On CPU
everything is fp32, so CPU runs are bitwise reproducible.

The training stages take ``runtime.precision`` (:data:`lori.training.options.PRECISIONS`): ``auto`` is the above,
``fp32`` keeps float32 on a GPU too (e.g. to rule precision out when debugging), ``bf16`` runs
bf16 autocast on a CPU too (CPUs with AMX; a CPU run is then no longer float32's to the bit).
"""
from __future__ import annotations

import contextlib

import torch


def autocast_context(device: torch.device | str, precision: str = "auto"):
    """The autocast a training step or teacher-forced pass runs under on ``device``."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto | fp32 | bf16, got {precision!r}")
    device = torch.device(device)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def params_device(params) -> torch.device:
    for p in params:
        return p.device
    return torch.device("cpu")


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Host -> device copy of a batch tensor: pinned and asynchronous to CUDA, a no-op move on CPU.

    Batches are built from in-memory token lists each step (there is no DataLoader), so this is
    where pinned memory applies: the copy overlaps with the kernels already queued."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on ``device_type`` now, or None when it is off."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
