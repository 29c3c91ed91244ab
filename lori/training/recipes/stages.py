"""Coconut's stage curriculum as a shared component: which stage a step is in, and the batch
layout of a stage (the first k CoT steps replaced by continuous thoughts, the rest kept as
targets). Used by the Coconut recipe and by LoRi's ``cot_stages`` option."""
from __future__ import annotations

import torch

from lori.data.records import ANSWER_SEP, BOT, EOT, Record
from lori.model.sequences import StudentBatch, encode, encode_many, pad_left, pad_right, prompts_ids, step_ids


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
    plans = [layout(stage, len(r.steps), thoughts_per_step, max_stage) for r in records]
    thoughts = plans[-1][0] if plans else 0          # the stage's, the same for every row
    prompts = [ids + [bot] for ids in prompts_ids(tokenizer, [r.question for r in records])]
    # every kept step of every row in one tokenizer call, then regrouped by row
    kept = [r.steps[skip:] for r, (_, skip) in zip(records, plans)]
    step_tokens = iter(step_ids(tokenizer, [s for steps in kept for s in steps]))
    sep = encode(tokenizer, f" {ANSWER_SEP}")
    answers = encode_many(tokenizer, [f" {r.answer}" for r in records])
    suffixes = [[eot] + [t for _ in steps for t in next(step_tokens)] + sep + answer + [tokenizer.eos_token_id]
                for steps, answer in zip(kept, answers)]
    p_ids, p_mask = pad_left(prompts, tokenizer.pad_token_id)
    s_ids, s_mask = pad_right(suffixes, tokenizer.pad_token_id)
    idx = torch.tensor(index if index is not None else list(range(len(records))), dtype=torch.long)
    return StudentBatch(p_ids, p_mask, s_ids, s_mask, 1, idx), thoughts
