"""CODI (Shen et al. 2025, "CODI: Compressing Chain-of-Thought into Continuous Space via Self-Distillation").

Self-distillation: ONE model is both the explicit-CoT teacher and the latent student, in the loop.
Each step runs two passes of the same weights on the same problems:

- teacher pass: ``[bos] question || CoT #### answer <eos>`` (teacher-forced), cross-entropy on
  CoT + answer (``L_teacher``). CODI drops the CoT's last step (``include_last_step: false``, the
  reference code's ``include_last_cot`` default);
- student pass: ``question || <bot> [K thoughts] <eot> #### answer <eos>``, each thought the last
  hidden state through the projection (``Linear -> GELU -> Linear -> LayerNorm``), cross-entropy
  on the answer (``L_student``);
- distillation: at the position that predicts the first answer token (last token of ``####``
  in both passes; CODI's "The answer is:" colon) the student's hidden states of every layer
  (embedding output included) are pulled towards the teacher's, which are detached:
  ``L_KD = mean_l smooth_l1(h_S^l, sg(h_T^l)) / std(h_T^l)``.

``L = L_student + distill_weight * L_KD + teacher_weight * L_teacher`` (paper: beta = 1 for GPT-2,
20 for LLaMA-1B; gamma = 1). The teacher pass needs no dumped targets or factors.

``step_anchor > 0`` (ours, off in CODI as published) adds LoRi's step anchors on the K thoughts
(:mod:`lori.training.step_info`), which then read the dumped teacher's targets and factors.
``decoder_weight > 0`` is SIM-CoT on CODI (Wei et al. 2025): an auxiliary decoder, used in training
only and not saved, decodes thought k (as fed to the student) into CoT step k, the last thought the
remaining steps joined (:func:`lori.training.recipes.sim_cot.decoder_loss` with one thought per group);
``+ decoder_weight * L_decoder``, its FLOPs counted.
"""
from __future__ import annotations

import torch

from lori.model.loading import num_params
from lori.model.sequences import student_batch, teacher_batch, teacher_sequence
from lori.training.loop import step_flops
from lori.training.losses import normalized_smooth_l1
from lori.training.recipes.args import CodiArgs
from lori.training.recipes.base import Recipe, RecipeContext
from lori.training.recipes.sim_cot import attach_decoder
from lori.training.step_info import states_at


def teacher_steps(steps: list[str], include_last_step: bool) -> list[str]:
    return list(steps) if include_last_step else list(steps[:-1])


def teacher_anchor_states(hidden_states, anchors: torch.Tensor) -> torch.Tensor:
    """Every layer's state at each row's anchor: hidden_states (L+1) x [B, T, d] -> [B, L+1, d]."""
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    return torch.stack([h[rows, anchors] for h in hidden_states], dim=1)


def build(args: CodiArgs, ctx: RecipeContext) -> Recipe:
    device, student, tokenizer, records = torch.device(ctx.device), ctx.student, ctx.tokenizer, ctx.records
    layers = list(range(student.model.config.num_hidden_layers + 1))     # embeddings + every block
    teacher_seqs = [teacher_sequence(tokenizer, r, teacher_steps(r.steps, args.include_last_step)) for r in records]
    params = num_params(student)
    if args.step_anchor > 0 and (ctx.step_targets is None or ctx.factors is None):
        raise ValueError("codi with step_anchor > 0 needs the step targets and factors (RecipeContext)")
    decode = attach_decoder(args, student, tokenizer, records) if args.decoder_weight > 0 else None

    def loss_step(idx: list[int]) -> dict[str, torch.Tensor]:
        seqs = [teacher_seqs[i] for i in idx]
        tb = {k: v.to(device) for k, v in teacher_batch(tokenizer, seqs).items()}
        t_out = student.model(**tb, output_hidden_states=True)
        anchors = torch.tensor([s.anchor for s in seqs], device=device)
        # CODI reads the teacher's states under no_grad: the distillation loss trains only the student pass
        t_states = teacher_anchor_states(t_out.hidden_states, anchors).detach()      # [B, L+1, d]
        sb = student_batch(tokenizer, [records[i] for i in idx], args.latent_steps, idx).to(device)
        s_out = student(sb, layers, keep_inputs=decode is not None)
        # both passes count: the teacher's sequence and the student's prompt + thoughts + answer
        positions = tb["input_ids"].numel() + sb.prompt_ids.numel() + len(idx) * args.latent_steps + sb.suffix_ids.numel()
        with torch.autocast(device.type, enabled=False):
            distill = normalized_smooth_l1(s_out.anchor.float(), t_states.float())
        loss = s_out.task_loss.float() + args.distill_weight * distill + args.teacher_weight * t_out.loss.float()
        flops = step_flops(params, positions)
        terms = {"task": s_out.task_loss, "distill": distill, "teacher": t_out.loss}
        if decode is not None:
            terms["decoder"], decoder_flops = decode(s_out.inputs, idx, None)
            loss, flops = loss + args.decoder_weight * terms["decoder"], flops + decoder_flops
        terms["flops"] = torch.tensor(flops)
        if args.step_anchor > 0:
            with torch.autocast(device.type, enabled=False):
                thoughts = states_at(s_out.thoughts.float(), layers, ctx.factors.layers)
                terms["step_anchor"] = ctx.step_targets.loss(thoughts, idx, ctx.factors)
            loss = loss + args.step_anchor * terms["step_anchor"]
        terms["loss"] = loss
        return terms

    return Recipe(loss_step)
