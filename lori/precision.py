"""Numeric precision per device: fp32 on CPU, bf16 autocast on CUDA.

Weights and optimizer state stay fp32 (master weights); autocast runs matmuls and attention
in bf16 on the GPU for training steps and teacher-forced passes (dump_hidden, targets).
Greedy decoding does not use it (autocast re-casts the weights at every token). On CPU
everything is fp32, so CPU runs are bitwise reproducible.
"""
from __future__ import annotations

import contextlib

import torch


def autocast_context(device: torch.device | str):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def params_device(params) -> torch.device:
    for p in params:
        return p.device
    return torch.device("cpu")
