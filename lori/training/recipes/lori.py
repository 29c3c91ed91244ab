"""LoRi: ``L = L_task + alpha * L_reason + gamma * L_anchor`` against a fixed teacher's low-rank statistics.

- ``L_task``: answer cross-entropy after ``<bot> [K thoughts] <eot> ####``;
- ``L_reason``: mean + covariance of the student's K thought states, projected by the teacher's
  factors into the core, against the teacher's CoT trajectory statistics (``targets/train.zarr``)
  — no token pairing, so it is length-invariant (docs/method.md §4–6);
- ``L_anchor``: the student's state at the position predicting the first answer token vs the
  teacher's, in the core (``anchor_space: core``) or on the full normalised states.

``decoder_weight > 0`` (ours, off in LoRi as published) is SIM-CoT's auxiliary decoder on LoRi's
thoughts (Wei et al. 2025): used in training only and not saved, it decodes thought k (as fed)
into CoT step k, the last thought the remaining steps joined (in a ``cot_stages`` stage k, only the
k steps the thoughts replace), ``+ decoder_weight * L_decoder``, its FLOPs counted — the same
step-level information as the step anchors, given the way SIM-CoT gives it.

No-CoT is this loss with K = 0 and alpha = gamma = 0 (:mod:`lori.training.recipes.no_cot`); a
CODI-*style* anchor against the fixed dumped teacher is ``alpha: 0, anchor_space: full,
anchor_loss: smooth_l1``. Knobs: :class:`lori.training.recipes.args.LoriArgs`.
"""
from __future__ import annotations

import numpy as np
import torch

from lori.artifacts.store import ArtifactError
from lori.artifacts.targets import Targets
from lori.model.loading import num_params
from lori.model.sequences import student_batch
from lori.training.loop import step_flops
from lori.training.losses import anchor_loss, moments, reason_loss, trajectory_moments
from lori.training.recipes.args import LoriArgs
from lori.training.recipes.base import Recipe, RecipeContext
from lori.training.recipes.sim_cot import attach_decoder
from lori.training.recipes.stages import coconut_batch, stage_at
from lori.training.step_info import record_step_lengths, record_step_points  # noqa: F401  (re-exported)


class TeacherTargets:
    """Per-example teacher statistics and anchors as tensors, from a checked targets store
    (:class:`lori.artifacts.targets.Targets`). Step anchors have their own targets
    (:class:`lori.training.step_info.StepTargets`, ``RecipeContext.step_targets``)."""

    def __init__(self, targets: Targets, covariance: str):
        self.lengths = torch.from_numpy(np.diff(targets.offsets))
        means, covs = trajectory_moments(targets.core, targets.offsets, covariance)
        self.mean, self.cov = torch.from_numpy(means), torch.from_numpy(covs)
        self.anchor_core = torch.from_numpy(targets.anchors_core[:, 0].astype(np.float32))
        self.anchor_full = torch.from_numpy(targets.anchors[:, 0].astype(np.float32))

    def to(self, device) -> "TeacherTargets":
        for name in ("mean", "cov", "anchor_core", "anchor_full"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def build(args: LoriArgs, ctx: RecipeContext) -> Recipe:
    """The loss step ``indices -> {loss, task, reason*, anchor, flops}``."""
    device = torch.device(ctx.device)
    student, tokenizer, records, targets, factors = ctx.student, ctx.tokenizer, ctx.records, ctx.targets, ctx.factors
    reads_targets = args.alpha > 0 or args.gamma > 0
    if args.needs_targets and (factors is None or (reads_targets and targets is None)):
        raise ArtifactError(f"LoRi with alpha={args.alpha}, gamma={args.gamma}, step_anchor={args.step_anchor} needs "
                            f"the teacher's targets and factors")
    if args.step_anchor > 0 and ctx.step_targets is None:
        raise ValueError("step_anchor > 0 needs the step targets (RecipeContext.step_targets)")
    layers = factors.layers if args.needs_targets else None
    params = num_params(student)
    decode = attach_decoder(args, student, tokenizer, records) if args.decoder_weight > 0 else None
    state = {"stage": args.cot_stages + 1}    # cot_stages = 0: always the final (published) layout

    def on_step(step: int) -> bool:
        if args.cot_stages > 0:
            state["stage"] = stage_at(step, args.steps_per_stage, args.cot_stages)
        return False                           # AdamW's state is kept across stages (our choice)

    def loss_step(idx: list[int]) -> dict[str, torch.Tensor]:
        staged = state["stage"] <= args.cot_stages
        if staged:   # Coconut's layout: K thoughts, then the CoT steps after the first `stage`, then the answer
            batch, _ = coconut_batch(tokenizer, [records[i] for i in idx], state["stage"], 1, args.cot_stages, idx)
            batch = batch.to(device)
            out = student(batch, layers, latent_steps=args.latent_steps, anchor=False, keep_inputs=decode is not None)
        else:
            batch = student_batch(tokenizer, [records[i] for i in idx], args.latent_steps, idx).to(device)
            # the answer block's states only for L_anchor
            out = student(batch, layers, anchor=args.gamma > 0, keep_inputs=decode is not None)
        positions = batch.prompt_ids.numel() + len(idx) * args.latent_steps + batch.suffix_ids.numel()
        flops = step_flops(params, positions)
        terms = {"task": out.task_loss}
        if args.cot_stages > 0:
            terms["stage"] = torch.tensor(float(state["stage"]))
        loss = out.task_loss.float()
        if decode is not None:   # stage k: only the k replaced steps have thoughts
            terms["decoder"], decoder_flops = decode(out.inputs, idx, state["stage"] if staged else None)
            loss, flops = loss + args.decoder_weight * terms["decoder"], flops + decoder_flops
        terms["flops"] = torch.tensor(flops)
        # statistics and normalisers in fp32 even under bf16 autocast (covariances lose too much in bf16)
        with torch.autocast(device.type, enabled=False):
            core = factors.project(out.thoughts.float()) if args.alpha > 0 else None   # [B,K,rL,rd]
            if args.alpha > 0:
                mean_s, cov_s = moments(core, args.covariance)
                valid = (targets.lengths[idx] > 0).to(device)
                terms.update(reason_loss(mean_s, cov_s, targets.mean[idx], targets.cov[idx], args.w_mean, args.w_cov,
                                         valid))
                loss = loss + args.alpha * terms["reason"]
            if args.gamma > 0 and not staged:   # the anchor's position exists only in the final layout
                anchor = out.anchor.float()                                        # [B, L, d]
                if args.anchor_space == "core":
                    a_s, a_t = factors.project(anchor), targets.anchor_core[idx]
                else:
                    a_s, a_t = factors.normalize(anchor), factors.normalize(targets.anchor_full[idx])
                terms["anchor"] = anchor_loss(a_s, a_t, args.anchor_loss)
                loss = loss + args.gamma * terms["anchor"]
            if args.step_anchor > 0:
                terms["step_anchor"] = ctx.step_targets.loss(out.thoughts.float(), idx, factors, core=core)
                loss = loss + args.step_anchor * terms["step_anchor"]
        terms["loss"] = loss
        return terms

    return Recipe(loss_step, on_step)
