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

from lori.data.records import ANSWER_SEP, BOT, EOT, Record
from lori.model.loading import num_params
from lori.model.sequences import StudentBatch, encode, pad_left, pad_right, prompt_ids, step_ids
from lori.training.loop import step_flops
from lori.training.recipes.args import CoconutArgs
from lori.training.recipes.base import Recipe, RecipeContext


def stage_at(step: int, steps_per_stage: int, max_stage: int) -> int:
    """Curriculum stage of optimizer step ``step`` (0-based): 1, 2, ..., max_stage + 1 (final)."""
    return min(1 + step // steps_per_stage, max_stage + 1)


def layout(stage: int, n_steps: int, thoughts_per_step: int, max_stage: int) -> tuple[int, int]:
    """(continuous thoughts, CoT steps removed) of one record at ``stage``."""
    if stage > max_stage:
        return max_stage * thoughts_per_step, n_steps
    return stage * thoughts_per_step, min(stage, n_steps)


def coconut_batch(tokenizer, records: list[Record], stage: int, thoughts_per_step: int, max_stage: int,
                  index: list[int] | None = None) -> tuple[StudentBatch, int]:
    """The stage's training batch and its number of thoughts (the same for every row).

    prompt block: ``[bos] question || <bot>`` (left-padded); suffix: ``<eot> remaining steps #### answer
    <eos>`` (right-padded) with ``answer_start = 1``, so the loss covers everything after ``<eot>``.
    """
    bot, eot = tokenizer.convert_tokens_to_ids(BOT), tokenizer.convert_tokens_to_ids(EOT)
    prompts, suffixes, thoughts = [], [], 0
    for r in records:
        thoughts, skip = layout(stage, len(r.steps), thoughts_per_step, max_stage)
        prompts.append(prompt_ids(tokenizer, r.question) + [bot])
        rest = [t for s in step_ids(tokenizer, r.steps[skip:]) for t in s]
        suffixes.append([eot] + rest + encode(tokenizer, f" {ANSWER_SEP}") + encode(tokenizer, f" {r.answer}")
                        + [tokenizer.eos_token_id])
    p_ids, p_mask = pad_left(prompts, tokenizer.pad_token_id)
    s_ids, s_mask = pad_right(suffixes, tokenizer.pad_token_id)
    idx = torch.tensor(index if index is not None else list(range(len(records))), dtype=torch.long)
    return StudentBatch(p_ids, p_mask, s_ids, s_mask, 1, idx), thoughts


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
