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
"""
from __future__ import annotations

import torch

from lori.model.loading import num_params
from lori.training.loop import step_flops
from lori.training.recipes.args import CoconutArgs
from lori.training.recipes.base import Recipe, RecipeContext
from lori.training.recipes.stages import coconut_batch, stage_at


def build(args: CoconutArgs, ctx: RecipeContext) -> Recipe:
    device, student, tokenizer, records = torch.device(ctx.device), ctx.student, ctx.tokenizer, ctx.records
    c, max_stage, per_stage = args.thoughts_per_step, args.max_stage, args.steps_per_stage
    state = {"stage": 1}
    params = num_params(student)

    def on_step(step: int) -> bool:
        state["stage"] = stage_at(step, per_stage, max_stage)
        return args.reset_optimizer and step > 0 and state["stage"] != stage_at(step - 1, per_stage, max_stage)

    def loss_step(idx: list[int]) -> dict[str, torch.Tensor]:
        batch, thoughts = coconut_batch(tokenizer, [records[i] for i in idx], state["stage"], c, max_stage, idx)
        out = student(batch.to(device), None, latent_steps=thoughts)
        positions = batch.prompt_ids.numel() + len(idx) * thoughts + batch.suffix_ids.numel()
        return {"loss": out.task_loss, "task": out.task_loss, "stage": torch.tensor(float(state["stage"])),
                "flops": torch.tensor(step_flops(params, positions))}

    return Recipe(loss_step, on_step)
