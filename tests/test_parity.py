"""Baseline fidelity: each baseline recipe (lori/training/recipes/) computes the same training loss, and
the same gradients on every trained parameter, as an independent re-implementation of its reference
code's training forward (tests/reference_forwards.py: Coconut, SIM-CoT, CODI, iCoT-SI, iCoT-KD), on the tiny
model and one batch of 4.

Where lori deliberately differs from a reference, the re-implementation is run with lori's choice
(``ref.LORI_CHOICES``, listed in docs/method.md, "Baseline fidelity") and a second check pins the
difference: the reference's own behaviour changes the loss on this batch (or, for position offsets
under RoPE, provably does not). Each test also mutates its recipe's loss once and checks that the
parity check then fails, so a change to a recipe's loss definition cannot pass unnoticed.
"""
from __future__ import annotations

import pytest
import torch

from lori import distill
from lori.data.records import read_records
from lori.distill import DistillConfig
from lori.model.sequences import StudentBatch, drop_cot_tokens
from lori.model.step_decoder import step_groups
from lori.training.recipes import codi, icot_kd, icot_si, sim_cot, stages
from lori.training.recipes.base import RecipeContext
from lori.training.recipes.registry import RECIPES
from tests import reference_forwards as ref

LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def batch(tiny_teacher):
    """The training records and a batch of 4 of them: two with 4 CoT steps (more than Coconut's
    max_stage = 3 groups: SIM-CoT joins the last steps), one with 3, one with 2 (a SIM-CoT group
    without a step), all of different prompt lengths (left padding in every latent batch)."""
    records = read_records(tiny_teacher.train)
    by_steps: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_steps.setdefault(len(r.steps), []).append(i)
    idx = [by_steps[4][0], by_steps[2][0], by_steps[3][0], by_steps[4][1]]
    assert len({len(records[i].question) for i in idx}) == 4
    return records, idx


def build(tiny_teacher, records, method: str, **knobs):
    """A fresh student (the tiny teacher) and the method's recipe, as the distill stage builds them."""
    cfg = DistillConfig(method=method, threads=1, device="cpu", **knobs)
    student, tok = distill.build_student(cfg, str(tiny_teacher.teacher))
    recipe = RECIPES[method](cfg.args, RecipeContext(student, tok, records, torch.device("cpu"), cfg.seed, cfg.steps,
                                                     teacher=str(tiny_teacher.teacher)))
    return student, tok, recipe, cfg.args


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    out = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(out, params)]


def check_parity(lori_loss: torch.Tensor, ref_loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Same loss (rtol 1e-5) and same gradient on every parameter (rtol 1e-4, atol 1e-7 of the largest)."""
    torch.testing.assert_close(lori_loss.detach().float(), ref_loss.detach().float(), rtol=LOSS_RTOL, atol=0)
    ours, theirs = grads(lori_loss, params), grads(ref_loss, params)
    scale = max(float(g.abs().max()) for g in theirs)
    assert scale > 0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=GRAD_RTOL, atol=1e-7 * scale,
                                   msg=lambda m: f"gradient of parameter {i} {tuple(a.shape)}: {m}")


def differs(lori_loss: torch.Tensor, ref_loss: torch.Tensor) -> bool:
    a, b = float(lori_loss.detach()), float(ref_loss.detach())
    return abs(a - b) > 10 * LOSS_RTOL * abs(b)


def trained(student) -> list[torch.Tensor]:
    return [p for p in student.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- Coconut
@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_coconut_loss_and_gradients_match_the_reference(tiny_teacher, batch, stage, monkeypatch):
    """Stage k = 1..3 replaces k steps by 2k latents; stage 4 is the final stage (every step gone, 6
    latents). Reference: facebookresearch/coconut ``Coconut.forward`` on ``MyCollator``'s batch."""
    records, idx = batch
    student, tok, recipe, args = build(tiny_teacher, records, "coconut", steps=10, steps_per_stage=1)
    recipe.on_step(stage - 1)
    terms = recipe.loss_step(idx)
    assert int(terms["stage"]) == stage
    ps = ref.pieces(tok, [records[i] for i in idx])

    def reference(s=student):
        return ref.coconut_loss(s.model, ps, stage, args.thoughts_per_step, args.max_stage, s.bot_id, s.eot_id,
                                tok.pad_token_id, **ref.LORI_CHOICES["coconut"])["loss"]

    check_parity(terms["loss"], reference(), trained(student))
    if stage == 2:
        # a changed loss definition fails the check: <eot>'s successor (the first kept step token) untrained
        real = stages.coconut_batch

        def one_target_less(*a, **kw):
            b, k = real(*a, **kw)
            return StudentBatch(b.prompt_ids, b.prompt_mask, b.suffix_ids, b.suffix_mask, 2, b.index), k

        monkeypatch.setattr("lori.training.recipes.coconut.coconut_batch", one_target_less)
        m_student, _, mutated, _ = build(tiny_teacher, records, "coconut", steps=10, steps_per_stage=1)
        mutated.on_step(stage - 1)
        with pytest.raises(AssertionError):
            check_parity(mutated.loss_step(idx)["loss"], reference(m_student), trained(m_student))


# ----------------------------------------------------------------------------- SIM-CoT
@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_sim_cot_loss_and_gradients_match_the_reference(tiny_teacher, batch, stage, monkeypatch):
    """Coconut's loss + decoder_weight * the step decoder's loss, gradients on the student *and* the
    decoder. Reference: InternLM/SIM-CoT ``CoconutGPT_Same_Word_Embedding.forward`` (``v1_aug``), run
    with lori's documented choices; the final stage pins each of them against the reference's."""
    records, idx = batch
    knobs = {"steps": 10, "steps_per_stage": 1, "decoder_weight": 0.7}
    student, tok, recipe, args = build(tiny_teacher, records, "sim_cot", **knobs)
    recipe.on_step(stage - 1)
    terms = recipe.loss_step(idx)
    ps = ref.pieces(tok, [records[i] for i in idx])

    def reference(s=student, **choices):
        return ref.sim_cot_loss(s.model, s.step_decoder.lm, ps, stage, args.thoughts_per_step, args.max_stage,
                                s.bot_id, s.eot_id, tok.pad_token_id, tok.eos_token_id,
                                decoder_weight=args.decoder_weight,
                                **{**ref.LORI_CHOICES["sim_cot"], **choices})["loss"]

    params = trained(student)
    assert any(p is q for p in params for q in student.step_decoder.parameters())     # the decoder is trained too
    check_parity(terms["loss"], reference(), params)
    # deliberate: the decoder loss is the mean over decoded steps of each step's
    # token-mean CE; the reference sums tokens per sample and averages samples, then groups
    assert differs(terms["loss"], reference(reduction="reference"))
    # deliberate: a group without a step (from stage 3 on, the 2-step row's third group) has no
    # target; the reference decodes the answer text there as a "pseudo thought"
    assert differs(terms["loss"], reference(empty_groups="answer")) == (stage >= 3)
    # the last group's joined steps are closed by one <eos>, as in the reference (" s3 s4 <eos>"), not
    # one per step; only the final stage joins steps here (4 steps, 3 groups)
    assert differs(terms["loss"], reference(join="eos_each")) == (stage == 4)
    if stage == 4:
        # decoder positions start at 0 in lori and at 1 in the reference: under RoPE only position
        # differences enter attention, so on a LLaMA-style decoder it is the same loss and gradient
        check_parity(terms["loss"], reference(first_position=1), params)
        # a changed loss definition fails the check: the steps beyond the last group no longer joined
        monkeypatch.setattr(sim_cot, "step_groups",
                            lambda n, groups, covered=None: step_groups(min(n, groups), groups, covered))
        m_student, _, mutated, _ = build(tiny_teacher, records, "sim_cot", **knobs)
        mutated.on_step(stage - 1)
        with pytest.raises(AssertionError):
            check_parity(mutated.loss_step(idx)["loss"], reference(m_student), trained(m_student))


# ----------------------------------------------------------------------------- CODI
def test_codi_loss_and_gradients_match_the_reference(tiny_teacher, batch, monkeypatch):
    """L_student + beta * L_KD + gamma * L_teacher with beta = 2, gamma = 0.5 (so a swapped weight
    shows); gradients on the model and the projection. Reference: zhenyi4/codi ``CODI.forward``
    (``distill_loss_div_std``, smooth-L1, ``remove_eos``, no LoRA), its positions left to the model
    (from the padded column 0) where lori counts from each row's first token: the same under RoPE."""
    records, idx = batch
    student, tok, recipe, args = build(tiny_teacher, records, "codi", distill_weight=2.0, teacher_weight=0.5)
    terms = recipe.loss_step(idx)
    ps = ref.pieces(tok, [records[i] for i in idx])
    assert len({len(p.question) for p in ps}) > 1                       # left padding in the question pass

    def reference(s=student, **choices):
        return ref.codi_loss(s.model, s.projection, ps, args.latent_steps, s.bot_id, s.eot_id, tok.pad_token_id,
                             args.distill_weight, args.teacher_weight, **{**ref.LORI_CHOICES["codi"], **choices})

    r = reference()
    for name in ("task", "distill", "teacher"):
        torch.testing.assert_close(terms[name].detach().float(), r[name].detach().float(), rtol=LOSS_RTOL, atol=0)
    params = trained(student)
    assert any(p is q for p in params for q in student.projection.parameters())
    check_parity(terms["loss"], r["loss"], params)
    # deliberate: padding is masked in every pass; the reference (fix_attn_mask: False) lets the
    # latent steps and the answer block attend to the question's left padding
    assert differs(terms["loss"], reference(mask_padding=False)["loss"])
    # NOT documented before this test (reported): the student's CE covers the answer and <eos> only;
    # the reference's labels are the whole answer block, so its CE also trains the answer prompt
    # after <eot> ("####" here, "The answer is:" there)
    assert differs(terms["loss"], reference(student_targets="decoder")["loss"])
    # a changed loss definition fails the check: the distillation term without its std normalisation
    monkeypatch.setattr(codi, "normalized_smooth_l1",
                        lambda s, t: torch.stack([torch.nn.functional.smooth_l1_loss(s[:, l], t[:, l].detach())
                                                  for l in range(t.shape[1])]).mean())
    m_student, _, mutated, _ = build(tiny_teacher, records, "codi", distill_weight=2.0, teacher_weight=0.5)
    with pytest.raises(AssertionError):
        check_parity(mutated.loss_step(idx)["loss"], reference(m_student)["loss"], trained(m_student))


# ----------------------------------------------------------------------------- iCoT-SI
@pytest.mark.parametrize("removed", [0, 20, 200])
def test_icot_si_loss_and_gradients_match_the_reference(tiny_teacher, batch, removed, monkeypatch):
    """CoT SFT with ``removed`` CoT tokens removed from the front of every row (capped at its CoT; 20
    cuts the batch's shortest CoT short, 200 removes every CoT). The removal counts are fixed (smoothing off,
    one token per step) so both sides remove the same. Reference: da03/Internalize_CoT_Step_by_Step
    ``train.py``'s removal and ``ImplicitModel.compute_loss``."""
    records, idx = batch
    knobs = {"steps": 1000, "steps_per_stage": 1, "remove_per_stage": 1, "removal_lambda": None}
    student, tok, recipe, _ = build(tiny_teacher, records, "icot_si", **knobs)
    recipe.on_step(removed)                                   # one token per step: `removed` scheduled at this step
    terms = recipe.loss_step(idx)
    ps = ref.pieces(tok, [records[i] for i in idx])
    lengths = [len(p.cot) for p in ps]
    assert float(terms["cot_left"]) == sum(max(0, n - removed) for n in lengths) / len(lengths)

    def reference(s=student, **choices):
        return ref.icot_si_loss(s.model, ps, [removed] * len(ps), tok.eos_token_id,
                                **{**ref.LORI_CHOICES["icot_si"], **choices})["loss"]

    check_parity(terms["loss"], reference(), trained(student))
    # deliberate: padding is never a target. The reference re-pads the cut rows' labels with <eos>,
    # so a row that lost more tokens than the batch's least-cut row gets extra <eos> targets
    uneven = len({min(n, removed) for n in lengths}) > 1
    assert differs(terms["loss"], reference(label_pad="eos")) == uneven
    if removed == 20:
        # a changed loss definition fails the check: one CoT token more removed than scheduled
        monkeypatch.setattr(icot_si, "drop_cot_tokens", lambda seq, n: drop_cot_tokens(seq, n + 1))
        m_student, _, mutated, _ = build(tiny_teacher, records, "icot_si", **knobs)
        mutated.on_step(removed)
        with pytest.raises(AssertionError):
            check_parity(mutated.loss_step(idx)["loss"], reference(m_student), trained(m_student))


# ----------------------------------------------------------------------------- iCoT-KD
@pytest.mark.parametrize("phase", icot_kd.PHASES)
def test_icot_kd_loss_and_gradients_match_the_reference(tiny_teacher, batch, phase, monkeypatch):
    """Each phase's loss on one batch: mind-reading (the student reads the teacher's diagonal states),
    emulation (the emulator regresses them), coupled (the student reads the emulator's). Reference:
    da03/implicit_chain_of_thought ``Teacher.extract_states``, ``Student.compute_loss``,
    ``Emulator.compute_loss`` and the coupled training step, with the states substituted in one
    forward of the right-padded batch (lori: the left-padded question block, then the answer on its cache)."""
    from lori.model.loading import load_checkpoint

    records, idx = batch
    knobs = {"steps": 3, "mind_reading_steps": 1, "emulation_steps": 1, "mixture_size": 3}
    student, tok, recipe, _ = build(tiny_teacher, records, "icot_kd", **knobs)
    step = icot_kd.PHASES.index(phase)
    recipe.on_step(step)
    terms = recipe.loss_step(idx)
    assert float(terms["phase"]) == step
    teacher, _ = load_checkpoint(str(tiny_teacher.teacher))
    ps = ref.pieces(tok, [records[i] for i in idx])

    def reference(row_delta: str = ref.LORI_CHOICES["icot_kd"]["row_delta"], s=student):
        states = ref.icot_kd_teacher_states(teacher, ps, tok.pad_token_id, row_delta=row_delta)
        if phase == "mind_reading":
            return ref.icot_kd_student_loss(s.model, s.vertical.read, ps, states, tok.pad_token_id)
        w = s.vertical
        emulated = ref.icot_kd_emulate(w.emulator, w.heads, w.mixture, w.rnn, w.key, w.query, w.out, ps,
                                       tok.pad_token_id, w.mixture_temperature)
        if phase == "emulation":
            return ref.icot_kd_emulator_loss(emulated, states)
        return ref.icot_kd_student_loss(s.model, w.read, ps, emulated, tok.pad_token_id)

    check_parity(terms["loss"], reference(), trained(student))
    # deliberate: each row's own diagonal step; the reference reuses the first row's for the batch,
    # which moves the states of the rows whose CoT length differs from the first row's
    own, first = (ref.icot_kd_teacher_states(teacher, ps, tok.pad_token_id, row_delta=d) for d in ("own", "first"))
    moved = [not torch.equal(own[b], first[b]) for b in range(len(ps))]
    assert not moved[0] and any(moved)
    if phase == "mind_reading":
        # a changed definition fails the check: every layer reads the state at the token before the answer
        m_student, _, mutated, _ = build(tiny_teacher, records, "icot_kd", diagonal="last_column", **knobs)
        mutated.on_step(0)
        with pytest.raises(AssertionError):
            check_parity(mutated.loss_step(idx)["loss"], reference(s=m_student), trained(m_student))
