"""Coconut (Hao et al. 2024, "Training Large Language Models to Reason in a Continuous Latent Space").

A curriculum from the CoT teacher (the paper's stage-0 checkpoint). At stage k = 1..max_stage the
first k reasoning steps of every record are replaced by k*c continuous thoughts::

    [bos] question || <bot> [k*c thoughts] <eot> step_{k+1} ... step_n #### answer <eos>

A thought is the last hidden state fed back unchanged as the next input embedding (no
projection; ``feedback: hidden``). Cross-entropy covers the remaining steps and the answer, not
the question, the thoughts or ``<bot>``/``<eot>``. A record with fewer than k steps loses all of
them and still gets k*c thoughts (the reference code). The final stage (max_stage + 1) removes
every step and keeps max_stage*c thoughts (``pad_latent_to_max``), which is exactly the layout
evaluation uses: the checkpoint's ``latent.json`` says K = max_stage*c, feedback hidden.

Stage k lasts ``steps_per_stage`` optimizer steps (the paper: 3 epochs per stage; c = 2,
max_stage = 3 on GSM8K); the final stage gets the remaining steps. The optimizer state is reset
at every stage boundary (``reset_optimizer``, as in the paper).

``step_anchor > 0`` (ours, off in Coconut as published) adds LoRi's step anchors on the thoughts
(:mod:`lori.training.step_info`): at stage k the k replaced steps are matched to the last of their
c thoughts, in the final stage every step to its even share of the K thoughts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from lori.model.loading import num_params
from lori.training.loop import step_flops
from lori.training.recipes.args import CoconutArgs
from lori.training.recipes.base import Recipe, RecipeContext
from lori.training.recipes.stages import coconut_batch, stage_at

if TYPE_CHECKING:
    from lori.model.latent import StudentOutput

#: an extra loss term on a Coconut step (SIM-CoT's decoder): (student output, indices, stage,
#: thoughts) -> ({name: term}, its weighted loss, its FLOPs)
ExtraTerm = Callable[["StudentOutput", list[int], int, int], tuple[dict[str, torch.Tensor], torch.Tensor, float]]


def build(args: CoconutArgs, ctx: RecipeContext, extra: ExtraTerm | None = None) -> Recipe:
    """Coconut's loss step; ``extra`` adds a term computed from the step's student output (the
    thoughts' input embeddings are kept for it)."""
    device, student, tokenizer, records = torch.device(ctx.device), ctx.student, ctx.tokenizer, ctx.records
    c, max_stage, per_stage = args.thoughts_per_step, args.max_stage, args.steps_per_stage
    state = {"stage": 1}
    params = num_params(student)

    def on_step(step: int) -> bool:
        state["stage"] = stage_at(step, per_stage, max_stage)
        return args.reset_optimizer and step > 0 and state["stage"] != stage_at(step - 1, per_stage, max_stage)

    if args.step_anchor > 0 and (ctx.step_targets is None or ctx.factors is None):
        raise ValueError("coconut with step_anchor > 0 needs the step targets and factors (RecipeContext)")
    layers = ctx.factors.layers if args.step_anchor > 0 else None

    def loss_step(idx: list[int]) -> dict[str, torch.Tensor]:
        stage = state["stage"]
        batch, thoughts = coconut_batch(tokenizer, [records[i] for i in idx], stage, c, max_stage, idx)
        out = student(batch.to(device), layers, latent_steps=thoughts, keep_inputs=extra is not None, anchor=False)
        positions = batch.prompt_ids.numel() + len(idx) * thoughts + batch.suffix_ids.numel()
        flops = step_flops(params, positions)
        terms = {"task": out.task_loss, "stage": torch.tensor(float(stage))}
        loss = out.task_loss
        if extra is not None:
            more, weighted, more_flops = extra(out, idx, stage, thoughts)
            terms.update(more)
            loss, flops = loss.float() + weighted, flops + more_flops
        terms["flops"] = torch.tensor(flops)
        if args.step_anchor > 0:
            # stage k: the k replaced steps on their thoughts; the final stage: every step (step_info)
            with torch.autocast(device.type, enabled=False):
                terms["step_anchor"] = ctx.step_targets.loss(out.thoughts.float(), idx, ctx.factors,
                                                      covered=stage if stage <= max_stage else None)
            loss = loss.float() + args.step_anchor * terms["step_anchor"]
        terms["loss"] = loss
        return terms

    return Recipe(loss_step, on_step)
