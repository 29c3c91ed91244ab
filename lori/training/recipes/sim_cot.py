"""SIM-CoT on Coconut (Wei et al. 2025, "SIM-CoT: Supervised Implicit Chain-of-Thought").

Coconut's curriculum and loss (:mod:`lori.training.recipes.coconut`), plus step-level supervision
through an auxiliary decoder (:class:`lori.model.step_decoder.StepDecoder`) used in training only:
each group of c thoughts (the ones that replace one CoT step) is decoded into that step's tokens,
``L = L_coconut + decoder_weight * L_decoder``. Gradients of ``L_decoder`` reach the decoder, the
thoughts, and through them the student. The decoder is attached to the student for training
(so the optimizer and resumable checkpoints see it) and is not part of the saved student: the
checkpoint is a Coconut checkpoint, evaluated exactly as Coconut is.

Which group decodes which step: stage k's k groups decode the k steps they replace; the final
stage's max_stage groups decode steps 0, 1, ..., with the steps from the last group's on joined
into its target (:func:`lori.model.step_decoder.step_groups`, the reference code's mapping).

Our choices where the paper and its code leave room (knobs in
:class:`~lori.training.recipes.args.SimCotArgs`, docs/method.md): the decoder starts as a copy of the
student's starting weights (``decoder_init: student``; the reference loads the pretrained base LM,
which a model trained from scratch does not have) or freshly initialised (``scratch``); the
decoder's loss is the mean over decoded steps of each step's token-mean cross-entropy (the
reference Coconut code sums tokens per sample); groups without a step get no target; the step
tokens are embedded with the student's own embedding table, as in the reference.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from lori.model.loading import num_params
from lori.model.sequences import pad_right, step_ids
from lori.model.step_decoder import StepDecoder, step_groups
from lori.training.loop import step_flops
from lori.training.recipes import coconut
from lori.training.recipes.args import SimCotArgs
from lori.training.recipes.base import Recipe, RecipeContext


def build_decoder(student, init: str) -> StepDecoder:
    """The auxiliary decoder: a copy of the student's LM (``student``) or the same architecture freshly
    initialised (``scratch``)."""
    from transformers import AutoModelForCausalLM

    if init == "student":
        lm = copy.deepcopy(student.model)
    elif init == "scratch":
        lm = AutoModelForCausalLM.from_config(student.model.config)
    else:
        raise ValueError(f"decoder_init must be student | scratch, got {init!r}")
    return StepDecoder(lm.to(next(student.model.parameters()).device).train())


def step_tokens(tokenizer, records) -> list[list[list[int]]]:
    """Every record's CoT steps tokenized once, as they appear in the CoT (``" step"``)."""
    flat = step_ids(tokenizer, [s for r in records for s in r.steps])
    out, k = [], 0
    for r in records:
        out.append(flat[k:k + len(r.steps)])
        k += len(r.steps)
    return out


def decoder_loss(decoder: StepDecoder, student, inputs: torch.Tensor, idx: list[int], targets, c: int,
                 covered: int | None, eos: int, pad: int) -> tuple[torch.Tensor | None, int]:
    """The decoder's loss on a batch whose thoughts (as fed, [B, K, d]) form K / c groups of c, and
    the decoder positions it ran (0 and None when no group has a step). ``targets``: per record, its
    steps' tokens (:func:`step_tokens`); ``covered``: only the first ``covered`` steps have thoughts."""
    groups = inputs.shape[1] // c
    rows, cols, seqs = [], [], []
    for row, i in enumerate(idx):
        for g, steps in enumerate(step_groups(len(targets[i]), groups, covered)):
            if steps:
                rows.append(row)
                cols.append(g)
                # a group's steps joined, closed by one <eos> (the reference's target)
                seqs.append([t for j in steps for t in targets[i][j]] + [eos])
    if not seqs:
        return None, 0
    device = inputs.device
    ids, mask = (t.to(device) for t in pad_right(seqs, pad))
    grouped = inputs[:, : groups * c].reshape(inputs.shape[0], groups, c, -1)            # [B, G, c, d]
    latents = grouped[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]   # [S, c, d]
    embeds = student.model.get_input_embeddings()(ids)
    return decoder(latents, embeds, ids, mask), ids.numel() + len(seqs) * c


#: a recipe's view of the attached decoder: (thoughts as fed [B, K, d], indices, steps covered or None)
#: -> (the decoder's loss, 0 when no group has a step; its FLOPs)
DecoderTerm = Callable[[torch.Tensor, list[int], "int | None"], tuple[torch.Tensor, float]]


def attach_decoder(args, student, tokenizer, records, thoughts_per_step: int = 1) -> DecoderTerm:
    """SIM-CoT's decoder for a recipe (``sim_cot``; ``codi`` and ``lori`` with one thought per step and
    ``decoder_weight > 0``) and the term that runs it. The decoder is registered on the student, so
    AdamW, gradient clipping and resumable checkpoints cover it, while the saved student keeps only its
    model and projection (:meth:`lori.model.latent.LatentStudent.save`)."""
    decoder = build_decoder(student, args.decoder_init)
    params, targets = num_params(decoder), step_tokens(tokenizer, records)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    student.step_decoder = decoder

    def term(inputs: torch.Tensor, idx: list[int], covered: int | None) -> tuple[torch.Tensor, float]:
        loss, positions = decoder_loss(decoder, student, inputs, idx, targets, thoughts_per_step, covered, eos, pad)
        if loss is None:
            return inputs.new_zeros((), dtype=torch.float32), 0.0
        return loss, step_flops(params, positions)

    return term


def build(args: SimCotArgs, ctx: RecipeContext) -> Recipe:
    max_stage = args.max_stage

    def decoder_term(out, idx: list[int], stage: int, thoughts: int):
        loss, flops = decode(out.inputs, idx, stage if stage <= max_stage else None)
        return {"decoder": loss}, args.decoder_weight * loss, flops

    # Coconut's recipe counts the student's parameters for its FLOPs, so the decoder is attached after
    # it; decoder_term reads `decode` when a step runs, after both
    recipe = coconut.build(args, ctx, extra=decoder_term)
    # with decoder_weight 0 the decoder still runs: its loss is logged, with no gradient
    decode = attach_decoder(args, ctx.student, ctx.tokenizer, ctx.records, args.thoughts_per_step)
    return recipe
