"""iCoT-KD (Deng et al. 2023, "Implicit Chain of Thought Reasoning via Knowledge Distillation").

Three phases in one run (the paper trains them as three runs), switched by optimizer step:

1. *mind-reading* (``mind_reading_steps``): the student answers ``question || #### answer`` while,
   before each layer l, its state at the question's last token is replaced by ``read_l(z_l)``, the
   teacher's normalised layer-l state on its CoT's diagonal (:mod:`lori.model.vertical`); answer
   cross-entropy; the student and its reading MLPs train;
2. *thought emulation* (``emulation_steps``): the emulator (a copy of the student's starting
   transformer) reads the question only and predicts the L teacher states;
   ``sum_l ||f_l - z_l||^2 / 2`` per example, batch mean (the reference code's loss);
3. *couple and optimise* (the remaining steps): the student reads the emulator's states; answer
   cross-entropy through both (the emulator frozen with ``fix_emulator``). No teacher.

Evaluation runs phase 3's system: the question, the emulator's states, then the answer (no CoT,
no thoughts), from the checkpoint's ``vertical.safetensors``. The teacher's diagonal states are
computed once at the start (one no-grad teacher pass over the training records, like the dumped
targets of LoRi, not counted in the training FLOPs); a step's FLOPs count what it trains:
``6 x (student + reading MLPs) x positions`` (phase 1), ``6 x emulator x question positions``
(phase 2), both (phase 3). Knobs: :class:`~lori.training.recipes.args.IcotKDArgs`.
"""
from __future__ import annotations

import logging

import torch

from lori.model.loading import load_checkpoint, num_params
from lori.model.sequences import student_batch, teacher_batch, teacher_sequence
from lori.model.vertical import Vertical, teacher_diagonal
from lori.progress import tqdm
from lori.training.loop import step_flops
from lori.training.recipes.args import IcotKDArgs
from lori.training.recipes.base import Recipe, RecipeContext

log = logging.getLogger("lori.distill")

PHASES = ("mind_reading", "emulation", "coupled")


def phase_at(step: int, args: IcotKDArgs) -> str:
    """The phase optimizer step ``step`` (0-based) trains."""
    if step < args.mind_reading_steps:
        return "mind_reading"
    return "emulation" if step < args.mind_reading_steps + args.emulation_steps else "coupled"


def diagonal_states(teacher, tokenizer, records, subset: str, batch_size: int, device) -> torch.Tensor:
    """[N, L, d] the teacher's normalised states on each record's diagonal (float32, on ``device``):
    from the question's last token to the token before the answer (the last token of ``####``)."""
    teacher = teacher.to(device).eval()
    out = []
    for start in tqdm(range(0, len(records), batch_size), desc="icot_kd: teacher diagonal", unit="batch",
                      mininterval=5, disable=None):
        seqs = [teacher_sequence(tokenizer, r) for r in records[start:start + batch_size]]
        batch = teacher_batch(tokenizer, seqs)
        first = torch.tensor([s.prompt_len - 1 for s in seqs], device=device)
        last = torch.tensor([s.anchor for s in seqs], device=device)
        out.append(teacher_diagonal(teacher, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                    first, last, subset))
    return torch.cat(out)


def build(args: IcotKDArgs, ctx: RecipeContext) -> Recipe:
    device, student, tokenizer, records = torch.device(ctx.device), ctx.student, ctx.tokenizer, ctx.records
    if ctx.teacher is None:
        raise ValueError("icot_kd reads the teacher's hidden states: the recipe needs the teacher checkpoint")
    if student.vertical is None:    # the emulator starts as a copy of the student's starting transformer
        student.vertical = Vertical.from_model(student.model, args.mixture_size, args.mixture_temperature).to(device)
    teacher, _ = load_checkpoint(ctx.teacher)
    diagonal = diagonal_states(teacher, tokenizer, records, args.diagonal, 64, device)
    del teacher
    log.info("icot_kd: teacher diagonal [%s] (%s), phases %d mind-reading + %d emulation + %d coupled steps",
             " x ".join(map(str, diagonal.shape)), args.diagonal, args.mind_reading_steps, args.emulation_steps,
             ctx.steps - args.mind_reading_steps - args.emulation_steps)
    vertical = student.vertical
    reader = num_params(student.model) + vertical.reading_params()
    emulator = vertical.emulator_params()
    state = {"phase": PHASES[0]}

    def on_step(step: int) -> bool:
        phase = phase_at(step, args)
        changed = step > 0 and phase != state["phase"]
        state["phase"] = phase
        if phase == "coupled" and args.fix_emulator:   # no gradient reaches it: AdamW leaves it as phase 2 left it
            for name, p in vertical.named_parameters():
                p.requires_grad_(name.startswith("read."))
        return changed and args.reset_optimizer

    def loss_step(idx: list[int]) -> dict[str, torch.Tensor]:
        batch = student_batch(tokenizer, [records[i] for i in idx], 0, idx).to(device)
        phase = state["phase"]
        if phase == "emulation":
            emulated = vertical.emulate(batch.prompt_ids, batch.prompt_mask)
            loss = (emulated.float() - diagonal[idx]).pow(2).sum(-1).sum(-1).div(2).mean()
            return {"loss": loss, "emulation": loss.detach(), "phase": torch.tensor(1.0),
                    "flops": torch.tensor(step_flops(emulator, batch.prompt_ids.numel()))}
        positions = batch.prompt_ids.numel() + batch.suffix_ids.numel()
        if phase == "mind_reading":
            out = student(batch, diagonal=diagonal[idx])
            flops = step_flops(reader, positions)
        else:
            out = student(batch)
            flops = step_flops(reader, positions) + step_flops(emulator, batch.prompt_ids.numel())
        return {"loss": out.task_loss, "task": out.task_loss.detach(),
                "phase": torch.tensor(float(PHASES.index(phase))), "flops": torch.tensor(flops)}

    return Recipe(loss_step, on_step)
