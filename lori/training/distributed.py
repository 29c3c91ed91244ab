"""Multi-process data parallelism (DDP or FSDP) for the training and dumping stages.

A stage launched under ``torchrun --nproc_per_node N python -m lori.<stage> ...`` (or
``accelerate launch``) sees ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment and joins
one process group: NCCL on GPUs, gloo on CPUs (which is what the tests use). Every rank
draws the same seeded global batch and trains on its slice, so a step sees the same
examples as on one device; only rank 0 writes outputs. Without those variables everything
here is a no-op and the stage runs as one process.

``parallel: ddp`` keeps a full replica per rank and averages gradients in one all-reduce
(:func:`average_gradients`). ``parallel: fsdp`` (for models whose weights, gradients and Adam
state do not fit one device, >= ~1B parameters) shards them over the ranks with FSDP2
(``torch.distributed.fsdp.fully_shard``: each decoder layer, then the whole module); a layer's
weights are all-gathered for its forward and backward and its gradients reduce-scattered.
:func:`unsharded` gathers the full weights on rank 0 for saving in the HF layout.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

log = logging.getLogger("lori.training.distributed")
PARALLEL = ("ddp", "fsdp")


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


# ---------------------------------------------------------------- FSDP
def is_fsdp(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of every HF model inside ``module`` (their ``_no_split_modules`` classes)."""
    names = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in module.modules() if type(m).__name__ in names]


def shard_fsdp(module: torch.nn.Module, info: DistInfo, per_layer: bool = True) -> torch.nn.Module:
    """Shard ``module`` in place over the ranks (FSDP2): every decoder layer, then the rest as the root.

    The module is still called as before (FSDP2 swaps its class rather than wrapping it), so the
    recipes' ``loss_step`` closures need no change. With ``per_layer`` each decoder layer is its
    own group, gathered for its forward and again for its backward (peak memory: one layer's
    full weights beyond the shards). That needs one forward call per layer per step: a module
    that calls its layers several times on a KV cache (the latent students: prompt, K thoughts,
    answer) fails in backward when the first call's gather has been freed, so it is sharded as
    one root group instead — all weights gathered for the step, while gradients and the AdamW
    state (3/4 of the training memory with fp32 Adam) stay sharded between steps.
    """
    from torch.distributed.fsdp import fully_shard

    if not info.enabled:
        log.info("parallel: fsdp with one process is plain training (nothing to shard over)")
        return module
    layers = decoder_layers(module) if per_layer else []
    if per_layer and not layers:
        raise ValueError(f"parallel: fsdp found no decoder layers in {type(module).__name__} "
                         "(no _no_split_modules); use parallel: ddp")
    for layer in layers:
        fully_shard(layer)
    fully_shard(module)
    log.info("FSDP: %s sharded over %d ranks", f"{len(layers)} decoder layers + root" if layers else "one root group",
             info.world_size)
    return module


def unsharded(module: torch.nn.Module, info: DistInfo, build: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    """The trained module with full, unsharded CPU weights for saving (rank 0; None on other ranks).

    Not FSDP: ``module`` itself, on CPU. FSDP: every rank takes part in gathering the full state
    dict (a collective), and rank 0 loads it into a fresh plain module from ``build()`` (so that
    ``save_pretrained`` writes the usual HF layout, class names and tied weights included).
    """
    if not is_fsdp(module):
        return module.cpu() if info.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return None
    with torch.device("cpu"):
        plain = build()
    plain.load_state_dict(full)
    return plain
