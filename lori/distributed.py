"""Multi-process data parallelism (DDP) for the training and dumping stages.

A stage launched under ``torchrun --nproc_per_node N python -m lori.<stage> ...`` (or
``accelerate launch``) sees ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment and joins
one process group: NCCL on GPUs, gloo on CPUs (which is what the tests use). Every rank
draws the same seeded global batch and trains on its slice, so a step sees the same
examples as on one device and gradients are averaged by DDP; only rank 0 writes outputs.
Without those variables everything here is a no-op and the stage runs as one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group described by the environment; return it and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def rank_slice(indices: list[int], info: DistInfo) -> list[int]:
    """This rank's share of a global batch (contiguous, sizes differ by at most one)."""
    n, w, r = len(indices), info.world_size, info.rank
    lo, hi = r * n // w, (r + 1) * n // w
    return indices[lo:hi]


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average gradients over ranks in one flat all-reduce.

    Done after ``backward`` rather than through a ``DistributedDataParallel`` wrapper because the
    recipes call their module directly inside ``loss_step`` (the latent chain runs several
    forwards per step); one bucket is enough for the model sizes a single stage trains.
    """
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_finite(loss: torch.Tensor, info: DistInfo) -> bool:
    """Whether the loss is finite on every rank (so that all ranks stop together)."""
    ok = torch.isfinite(loss.detach()).all()
    if not info.enabled:
        return bool(ok)
    flag = ok.float().reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
