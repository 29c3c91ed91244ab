"""iCoT-SI (Deng et al. 2024, "From Explicit CoT to Implicit CoT: Learning to Internalize CoT Step by Step").

Fine-tune on ``[bos] question || CoT #### answer <eos>`` (cross-entropy on CoT + answer) while
removing CoT *tokens* from the front on a linear schedule: ``remove_per_stage`` tokens (the
paper's Delta = 8 per epoch) every ``steps_per_stage`` optimizer steps, one token at a time —
token t goes at step ``t * round(steps_per_stage / remove_per_stage)``, as in the reference code.

- removal smoothing: each example drops ``o`` extra tokens, ``P(o) ~ exp(-lambda * o)`` on
  o = 0..99 (the tail's mass on 99); lambda = 4 in the paper, ``removal_lambda: null`` turns it off;
- ``remove_all_beyond``: once the scheduled count reaches it, all CoT goes (the paper's GSM8K
  run: 39); null = never;
- the optimizer state is reset whenever the scheduled count grows, while some CoT is left.

Training must end with no CoT left (checked up front): the student answers right after the
question, ``question || #### answer`` — the No-CoT layout, so it is saved with K = 0 and evaluated
like ``no_cot``. The offsets are drawn from a generator seeded by (seed, step): resuming replays them.
"""
from __future__ import annotations

import math

import torch

from lori.model.loading import num_params
from lori.model.sequences import drop_cot_tokens, teacher_batch, teacher_sequence
from lori.training.loop import step_flops
from lori.training.recipes.args import IcotSIArgs
from lori.training.recipes.base import Recipe, RecipeContext

MAX_OFFSET = 100   # the reference code's support of the smoothing offset


def removal_distribution(lam: float, support: int = MAX_OFFSET) -> torch.Tensor:
    """``P(o) = (1 - e^-lambda) e^(-lambda o)`` for o < support, the remaining mass on the last o."""
    o = torch.arange(support, dtype=torch.float64)
    p = (1 - math.exp(-lam)) * torch.exp(-lam * o)
    p[-1] += 1 - p.sum()
    return p


def steps_per_token(steps_per_stage: int, remove_per_stage: int) -> int:
    return int(round(steps_per_stage / remove_per_stage))


def scheduled_removal(step: int, per_token: int, remove_all_beyond: int | None) -> float:
    """CoT tokens scheduled for removal at optimizer step ``step`` (0-based); ``inf`` = all."""
    n = step if per_token == 0 else step // per_token
    return math.inf if remove_all_beyond is not None and n >= remove_all_beyond else n


def removal_counts(cot_lens: list[int], scheduled: float, dist: torch.Tensor | None,
                   gen: torch.Generator | None = None) -> list[int]:
    """Tokens removed from each example's CoT: the scheduled count plus a smoothing offset per
    example (drawn from ``dist``; none when ``dist`` is None), capped at the CoT's length."""
    if math.isinf(scheduled):
        return list(cot_lens)
    offsets = [0] * len(cot_lens) if dist is None else \
        torch.multinomial(dist, len(cot_lens), replacement=True, generator=gen).tolist()
    return [min(n, int(scheduled) + o) for n, o in zip(cot_lens, offsets)]


def build(args: IcotSIArgs, ctx: RecipeContext) -> Recipe:
    device, student, tokenizer, records = torch.device(ctx.device), ctx.student, ctx.tokenizer, ctx.records
    seqs = [teacher_sequence(tokenizer, r) for r in records]
    longest = max(s.cot_len for s in seqs)
    per_token = steps_per_token(args.steps_per_stage, args.remove_per_stage)
    last = scheduled_removal(ctx.steps - 1, per_token, args.remove_all_beyond)
    if last < longest:
        need = longest * max(per_token, 1) + 1
        raise ValueError(f"icot_si: the schedule removes {last} CoT tokens by the last step ({ctx.steps} steps, "
                         f"one token every {max(per_token, 1)} step(s) = {args.remove_per_stage} per "
                         f"{args.steps_per_stage} steps) but the longest CoT has "
                         f"{longest} tokens; training must end with no CoT left (evaluation answers without one): "
                         f"use steps >= {need}, fewer steps_per_stage, more remove_per_stage, or remove_all_beyond")
    dist = removal_distribution(args.removal_lambda) if args.removal_lambda is not None else None
    state = {"step": 0}
    params = num_params(student)

    def on_step(step: int) -> bool:
        state["step"] = step
        if not args.reset_optimizer or step == 0:
            return False
        prev = scheduled_removal(step - 1, per_token, args.remove_all_beyond)
        return scheduled_removal(step, per_token, args.remove_all_beyond) > prev and prev < longest

    def loss_step(idx: list[int]) -> dict[str, torch.Tensor]:
        scheduled = scheduled_removal(state["step"], per_token, args.remove_all_beyond)
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + state["step"])
        counts = removal_counts([seqs[i].cot_len for i in idx], scheduled, dist, gen)
        cut = [drop_cot_tokens(seqs[i], n) for i, n in zip(idx, counts)]
        batch = {k: v.to(device) for k, v in teacher_batch(tokenizer, cut).items()}
        out = student.model(**batch)
        return {"loss": out.loss, "task": out.loss,
                "cot_left": torch.tensor(sum(s.cot_len for s in cut) / len(cut)),
                "scheduled": torch.tensor(float(min(scheduled, longest))),
                "flops": torch.tensor(step_flops(params, batch["input_ids"].numel()))}

    return Recipe(loss_step, on_step)
