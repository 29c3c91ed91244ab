"""The one training loop every recipe shares (teacher SFT and all students).

Methods differ only in their ``loss_step(indices) -> dict[str, Tensor]`` (key ``loss`` is
optimised; the rest are logged). AdamW, linear warmup then cosine to zero, gradient
clipping, seeded epoch-wise shuffling, a progress bar, ``metrics.jsonl`` rows, and a guard
that stops on a non-finite loss naming the step, the loss terms and the batch's examples.

Resumable: every ``checkpoint_every`` steps the loop writes ``<out>.ckpt/`` atomically —
the module's weights (safetensors), the optimizer, scheduler, RNG states, step and logged
rows (``torch.save`` of tensors and plain values only, read back with ``weights_only=True``)
and the run's fingerprint. A rerun with the same fingerprint restores all of it and replays
the seeded batch stream to the saved step, so on CPU a killed-and-resumed run is bitwise
equal to an uninterrupted one. A checkpoint with another fingerprint is ignored with a
warning. Nothing non-finite is ever checkpointed.
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

import lori
from lori.artifacts.store import atomic_path, atomic_write_text
from lori.config import config_hash
from lori.model.precision import autocast_context, params_device
from lori.progress import tqdm  # tqdm that also writes lines into log files
from lori.training.distributed import (
    PARALLEL,
    DistInfo,
    all_finite,
    average_gradients,
    barrier,
    is_fsdp,
    rank_slice,
    shard_fsdp,
)
from lori.training.options import OptimConfig

log = logging.getLogger("lori.training.loop")


class NonFiniteLoss(FloatingPointError):
    pass


def lr_lambda(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def micro_batches(idx: list[int], grad_accum: int) -> list[list[int]]:
    """``idx`` cut into ``grad_accum`` equal consecutive micro-batches (the caller checks divisibility)."""
    size = len(idx) // grad_accum
    return [idx[i * size:(i + 1) * size] for i in range(grad_accum)]


def combine_terms(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One optimizer step's logged terms from its micro-batches' terms: ``flops`` is a cost and adds
    up; every other term (a mean-reduced loss) is the mean over the equal-sized micro-batches."""
    return {k: sum(float(p[k].detach()) for p in parts) / (1 if k == "flops" else len(parts)) for k in parts[0]}


def batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded epochs of shuffled example indices."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i : i + batch_size]


def length_curriculum_batches(lengths: list[int], batch_size: int, seed: int,
                              steps_per_stage: int) -> Iterator[list[int]]:
    """Seeded batches that bring in longer chains stage by stage.

    With the distinct chain lengths l_1 < ... < l_m of ``lengths`` (e.g. CoT steps per problem),
    stage s = 1..m-1 lasts ``steps_per_stage`` steps and draws only examples of length <= l_s;
    then every example, as :func:`batches` with the same seed. A pure function of its arguments,
    so replaying it to a saved step resumes it exactly."""
    levels = sorted(set(lengths))
    for stage, level in enumerate(levels[:-1]):
        pool = [i for i, n in enumerate(lengths) if n <= level]
        stream = batches(len(pool), batch_size, seed + 1 + stage)
        for _ in range(steps_per_stage):
            yield [pool[j] for j in next(stream)]
    yield from batches(len(lengths), batch_size, seed)


# ---------------------------------------------------------------- checkpoints
def step_flops(params: int, positions: int) -> float:
    """Training FLOPs of one step: 6 x parameters x positions processed (forward 2, backward 4).

    The usual dense estimate (Kaplan et al. 2020); attention's quadratic term is left out, which
    is small at our sequence lengths. Positions include padding: the hardware computes them."""
    return 6.0 * params * positions


def checkpoint_dir(out: str | Path) -> Path:
    """Where a stage writing ``out`` keeps its resumable training checkpoint: ``<out>.ckpt``."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def fingerprint(*parts: object) -> str:
    """Identity of a training run: its config plus the identity (name, size, mtime) of its input
    files, so a checkpoint is never resumed against changed data or a retrained teacher."""
    def stat(p) -> list:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]

    return config_hash([stat(p) if isinstance(p, (str, Path)) and Path(p).exists() else p for p in parts])


def provenance(cfg) -> dict:
    """A trained checkpoint's ``train_config.json``: the resolved config plus its hash and the package version."""
    values = asdict(cfg)
    return {**values, "config_hash": config_hash(values), "lori_version": lori.__version__}


def discard_checkpoint(ckpt: str | Path | None) -> None:
    """Remove a training checkpoint once the stage's final output is safely written."""
    if ckpt is not None:
        shutil.rmtree(ckpt, ignore_errors=True)


def _rng_state() -> dict:
    # numpy's and Python's states are stored as tensors / plain tuples: weights_only loading accepts them
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _save_checkpoint(ckpt: Path, module: torch.nn.Module, opt, sched, step: int, rows: list, window: dict,
                     run_id: str, totals: dict) -> None:
    from safetensors.torch import save_model

    with atomic_path(ckpt) as tmp:
        tmp.mkdir()
        save_model(module, str(tmp / "model.safetensors"))    # handles tied weights
        torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": _rng_state(), "rows": rows, "window": window, "totals": totals}, tmp / "state.pt")
        # written last: a checkpoint is complete iff its meta.json exists (the rename makes it atomic anyway)
        (tmp / "meta.json").write_text(json.dumps({"fingerprint": run_id, "step": step,
                                                   "lori_version": lori.__version__}) + "\n")
    log.info("checkpoint at step %d -> %s", step, ckpt)


def _load_checkpoint(ckpt: Path, module: torch.nn.Module, opt, sched, run_id: str) -> dict | None:
    """Restore a matching checkpoint into module/opt/sched/RNG; return its state, or None to start fresh."""
    from safetensors.torch import load_model

    meta_path = ckpt / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != run_id:
            log.warning("ignoring checkpoint %s: made by another run (fingerprint %s, this run %s); starting from step 0",
                        ckpt, meta.get("fingerprint"), run_id)
            return None
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged checkpoint costs time, never correctness: start over
        log.warning("ignoring unreadable checkpoint %s (%s: %s); starting from step 0", ckpt, type(e).__name__, e)
        return None
    # a failure half-way through restoring must not leave a mix of fresh and restored state behind
    fresh = ({k: v.detach().clone() for k, v in module.state_dict().items()}, opt.state_dict(), sched.state_dict(),
             _rng_state())
    try:
        load_model(module, ckpt / "model.safetensors", device=str(params_device(module.parameters())))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
    except Exception as e:
        module.load_state_dict(fresh[0])
        opt.load_state_dict(fresh[1])
        sched.load_state_dict(fresh[2])
        _set_rng_state(fresh[3])
        log.warning("ignoring unreadable checkpoint %s (%s: %s); starting from step 0", ckpt, type(e).__name__, e)
        return None
    log.info("resuming from checkpoint %s at step %d", ckpt, state["step"])
    return state


def _check_finite_params(module: torch.nn.Module, step: int) -> None:
    local = lambda p: p.to_local() if hasattr(p, "to_local") else p   # noqa: E731 - FSDP: this rank's shard
    bad = [n for n, p in module.named_parameters() if not torch.isfinite(local(p)).all()]
    if bad:
        raise NonFiniteLoss(f"non-finite parameters after step {step} ({', '.join(bad[:5])}"
                            f"{' ...' if len(bad) > 5 else ''}); not saved")


# ---------------------------------------------------------------- runtime
def hf_models(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost Hugging Face models inside ``module`` (itself, or e.g. a student's ``model``)."""
    from transformers import PreTrainedModel

    found, inside = [], set()
    for name, m in module.named_modules():
        if isinstance(m, PreTrainedModel) and not any(name.startswith(f"{o}.") or o == "" for o in inside):
            found.append(m)
            inside.add(name)
    return found


def prepare_module(module: torch.nn.Module, cfg: OptimConfig, info: DistInfo) -> torch.nn.Module:
    """Apply the runtime knobs in place, in the order they compose: FSDP sharding, then compile."""
    if cfg.parallel not in PARALLEL:
        raise ValueError(f"parallel must be {' | '.join(PARALLEL)}, got {cfg.parallel!r}")
    if cfg.parallel == "fsdp":
        # an HF model makes one forward per step; a wrapper (a latent student) calls its model
        # several times on a KV cache, which per-layer FSDP groups cannot backpropagate through
        from transformers import PreTrainedModel

        shard_fsdp(module, info, per_layer=isinstance(module, PreTrainedModel))
    if cfg.compile:
        # the HF model, not a student's Python loop around it: the latent chain calls it K + 2 times per step
        for m in hf_models(module) or [module]:
            m.compile()
        log.info("torch.compile: %s (the first steps, and new sequence lengths, compile)",
                 ", ".join(type(m).__name__ for m in hf_models(module)) or type(module).__name__)
    return module


# ---------------------------------------------------------------- validation
def validate(module: torch.nn.Module, evaluator: Callable[[], dict]) -> dict:
    """``evaluator()`` with ``module`` in eval mode and no gradients, leaving training untouched:
    every submodule's train/eval mode is put back and no random number is consumed (the torch,
    CUDA, numpy and Python RNG states are restored), so the training that follows is bitwise the
    one without validation."""
    modes = [(m, m.training) for m in module.modules()]
    rng = _rng_state()
    module.eval()
    try:
        with torch.no_grad():
            return evaluator()
    finally:
        _set_rng_state(rng)
        for m, training in modes:
            m.training = training


# ---------------------------------------------------------------- the loop
def fit(module: torch.nn.Module, loss_step: Callable[[list[int]], dict[str, torch.Tensor]],
        n_examples: int, cfg: OptimConfig, seed: int, metrics_path: str | Path | None = None,
        desc: str = "train", ckpt: str | Path | None = None, run_id: str = "",
        dist_info: DistInfo | None = None, on_step: Callable[[int], bool] | None = None,
        evaluator: Callable[[], dict] | None = None, tb_dir: str | Path | None = None,
        stream: Iterator[list[int]] | None = None) -> list[dict]:
    """Run ``cfg.steps`` optimizer steps on ``module``'s trainable parameters; return the logged rows.

    ``on_step(step)`` runs before each step's loss (curricula: Coconut's stages, iCoT-SI's token
    removal); when it returns True the optimizer's state is reset (those papers reset AdamW at
    every schedule change). It is a pure function of the step, so resuming replays it exactly.

    With ``ckpt`` and ``cfg.checkpoint_every > 0`` the loop checkpoints there and resumes from a
    checkpoint whose fingerprint equals ``run_id`` (see :func:`fingerprint`). The caller writes the
    final output and then calls :func:`discard_checkpoint`.

    Under ``torchrun`` (``dist_info.enabled``) every rank draws the same global batch, computes
    the loss on its slice, and gradients are averaged across ranks before the step (data
    parallelism; identical in expectation to one device). Only rank 0 writes metrics and
    checkpoints; a non-finite loss on any rank stops every rank. ``cfg.parallel == "fsdp"``
    shards ``module`` in place first (:func:`lori.training.distributed.shard_fsdp`; no resumable
    checkpoints then) and ``cfg.compile`` compiles its HF model(s) in place; the caller saves
    through :func:`lori.training.distributed.unsharded`.

    ``evaluator()`` (with ``cfg.eval_every > 0``) measures the model on a validation split every
    ``cfg.eval_every`` steps and at the last step (:func:`validate`: eval mode, no gradients, no
    RNG consumed); that step's metrics row gets its keys (``val_accuracy``, ``val_n``) plus the
    cumulative training wall seconds ``train_s`` (validation time excluded, as it is from
    ``sec_per_step``) and training FLOPs ``flops_total`` (the sum of the steps' ``flops`` terms).
    An evaluation step always logs a row; with ``eval_every`` a multiple of ``log_every`` the rows
    are those of a run without validation plus these keys. Rank 0 evaluates (DDP); under FSDP
    validation is skipped with a warning.

    ``cfg.grad_accum = m`` cuts each step's batch (each rank's slice) into m equal micro-batches,
    runs ``loss_step`` and backward on each with the loss scaled by 1/m, and steps once: the batch,
    the data stream and, for a loss that is a mean over examples, the update are those of
    ``grad_accum = 1`` (equal within float rounding), with a 1/m of the activation memory. The
    logged ``flops`` of a step is the sum over its micro-batches, every other term the mean.

    With ``tb_dir`` (and ``cfg.tensorboard``) rank 0 also writes every logged row as TensorBoard
    scalars there (:mod:`lori.training.tensorboard_log`).

    ``stream`` replaces the default seeded epochs (:func:`batches` over ``n_examples``) by another
    deterministic stream of batches, e.g. :func:`length_curriculum_batches`.
    """
    info = dist_info or DistInfo()
    if cfg.grad_accum < 1 or cfg.batch_size % (info.world_size * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {info.world_size} process(es) x "
                         f"grad_accum {cfg.grad_accum}")
    prepare_module(module, cfg, info)
    sharded = is_fsdp(module)
    if sharded and ckpt is not None and cfg.checkpoint_every > 0:
        log.warning("parallel: fsdp: resumable checkpoints are not written (checkpoint_every ignored); "
                    "a killed run starts again from step 0")
        ckpt = None
    if evaluator is not None and cfg.eval_every > 0 and sharded:
        log.warning("parallel: fsdp: validation during training is not supported (eval_every ignored)")
    eval_every = cfg.eval_every if evaluator is not None and not sharded else 0
    params = [p for p in module.parameters() if p.requires_grad]
    fused = all(p.is_cuda for p in params)
    device = params_device(params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.steps))
    ckpt = Path(ckpt) if ckpt is not None and cfg.checkpoint_every > 0 else None
    state = _load_checkpoint(ckpt, module, opt, sched, run_id) if ckpt is not None else None
    start = state["step"] if state else 0
    rows, window = (state["rows"], state["window"]) if state else ([], {})
    # cumulative training seconds (validation excluded) and FLOPs, carried over a resume
    totals = (state.get("totals") if state else None) or {}
    train_s0, flops_total = totals.get("train_s", 0.0), totals.get("flops_total", 0.0)
    eval_s = 0.0                 # seconds spent validating since t0
    stream = stream if stream is not None else batches(n_examples, cfg.batch_size, seed)
    for _ in range(start):       # the data position: replay the seeded stream to the saved step
        next(stream)
    board = None
    if cfg.tensorboard and tb_dir is not None and info.is_main:
        from lori.training.tensorboard_log import BoardWriter   # optional dependency: only when asked for

        board = BoardWriter(tb_dir, start, cfg.batch_size)
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc=desc, mininterval=5, disable=None, initial=start, total=cfg.steps)
    for step in bar:
        idx = next(stream)
        if on_step is not None and on_step(step):
            opt.state.clear()        # fresh AdamW moments and bias correction; the lr schedule goes on
        opt.zero_grad(set_to_none=True)
        parts = []
        for micro in micro_batches(rank_slice(idx, info), cfg.grad_accum):
            with autocast_context(device, cfg.precision):
                terms = loss_step(micro)
            loss = terms["loss"]
            if not all_finite(loss, info):
                values = {k: float(v.detach()) for k, v in terms.items()}
                raise NonFiniteLoss(f"non-finite loss at step {step}: {values}; batch example indices {micro[:16]}"
                                    f"{' ...' if len(micro) > 16 else ''}")
            # 1/m: the accumulated gradient is that of the mean over the whole batch
            (loss / cfg.grad_accum if cfg.grad_accum > 1 else loss).backward()
            parts.append(terms)
        if not sharded:                      # FSDP reduce-scatters (averages) gradients in backward
            average_gradients(params, info)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        for k, v in combine_terms(parts).items():
            window.setdefault(k, []).append(v)
        if "flops" in window:
            flops_total += window["flops"][-1]
        evaluating = eval_every > 0 and ((step + 1) % eval_every == 0 or step + 1 == cfg.steps)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps or evaluating:
            trained = time.perf_counter() - t0 - eval_s          # this process's training seconds
            row = {"step": step + 1, "lr": sched.get_last_lr()[0],
                   **{k: sum(v) / len(v) for k, v in window.items()},
                   "sec_per_step": trained / (step + 1 - start)}
            if evaluating:
                row.update(train_s=train_s0 + trained, flops_total=flops_total)
                t_eval = time.perf_counter()
                if info.is_main:
                    row.update(validate(module, evaluator))
                barrier(info)                    # the other ranks wait for rank 0's validation
                eval_s += time.perf_counter() - t_eval
            rows.append(row)
            if board is not None:
                board.row(row)
            window = {}
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            log.info("step %d %s", step + 1, " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        if ckpt is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _check_finite_params(module, step + 1)   # a finite loss can still leave inf/NaN weights
            if info.is_main:
                totals = {"train_s": train_s0 + time.perf_counter() - t0 - eval_s, "flops_total": flops_total}
                _save_checkpoint(ckpt, module, opt, sched, step + 1, rows, window, run_id, totals)
            barrier(info)
    if board is not None:
        board.close()
    _check_finite_params(module, cfg.steps)
    if metrics_path is not None and info.is_main:
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
