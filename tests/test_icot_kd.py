"""iCoT-KD (lori/training/recipes/icot_kd.py, lori/model/vertical.py): the diagonal the paper defines,
the emulator's loss, the mind-reading substitution, the coupled system answering from emulated
states, its checkpoint and FLOPs. Loss and gradient parity with the reference code: tests/test_parity.py."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from lori import distill, evaluate
from lori.artifacts.store import ArtifactError
from lori.data.records import Record, read_records
from lori.distill import DistillConfig
from lori.model.latent import LatentStudent
from lori.model.loading import load_checkpoint, num_params
from lori.model.sequences import student_batch, teacher_batch, teacher_sequence
from lori.model.vertical import Vertical, diagonal_positions, teacher_diagonal
from lori.training.recipes import icot_kd
from lori.training.recipes.base import RecipeContext
from tests.tiny import RUNTIME

FOUR = Record("r4", "Tom has 8 rocks . he loses 4 . he finds 52 more . he gets 2 times as many . how many now ?",
              ["<<8-4=4>>", "<<4+52=56>>", "<<56*2=112>>", "<<112-12=100>>"], "100")


def build(tiny_teacher, records, **knobs):
    cfg = DistillConfig(method="icot_kd", threads=1, device="cpu", **{"steps": 3, "mind_reading_steps": 1,
                                                                      "emulation_steps": 1, **knobs})
    student, tok = distill.build_student(cfg, str(tiny_teacher.teacher))
    recipe = icot_kd.build(cfg.args, RecipeContext(student, tok, records, torch.device("cpu"), cfg.seed, cfg.steps,
                                                   teacher=str(tiny_teacher.teacher)))
    return student, tok, recipe


def test_diagonal_positions_follow_the_papers_formula():
    first, last = torch.tensor([5, 5, 3]), torch.tensor([11, 10, 3])
    # round(first + l (last - first) / 3): 5 + 5/3 = 6.67 -> 7, 5 + 10/3 = 8.33 -> 8; an empty span stays put
    assert diagonal_positions(first, last, 4).tolist() == [[5, 7, 9, 11], [5, 7, 8, 10], [3, 3, 3, 3]]
    assert diagonal_positions(first, last, 4, "first_column").tolist() == [[5] * 4, [5] * 4, [3] * 4]
    assert diagonal_positions(first, last, 4, "last_column").tolist() == [[11] * 4, [10] * 4, [3] * 4]
    assert diagonal_positions(first, last, 1).tolist() == [[5], [5], [3]]
    with pytest.raises(ValueError, match="subset must be"):
        diagonal_positions(first, last, 4, "top_row")


def test_the_diagonal_runs_from_the_question_to_the_token_before_the_answer(tiny_teacher):
    """On a hand-made CoT: layer 0 reads the question's last token ('||'), the last layer the token
    before the answer (the last of '####'), the layers between it spread evenly over the CoT."""
    _, tok = load_checkpoint(str(tiny_teacher.teacher))
    seq = teacher_sequence(tok, FOUR)
    first, last = torch.tensor([seq.prompt_len - 1]), torch.tensor([seq.anchor])
    pos = diagonal_positions(first, last, 5)[0].tolist()
    tokens = [t.lstrip("\u2581") for t in tok.convert_ids_to_tokens(seq.input_ids)]   # word pieces: "▁||"
    assert tokens[pos[0]] == "||" and tokens[pos[-1]] == "####" and tokens[pos[-1] + 1] == "1"   # answer 100
    assert all(seq.prompt_len <= p < seq.prompt_len + seq.cot_len for p in pos[1:-1])
    gaps = [b - a for a, b in zip(pos, pos[1:])]
    assert max(gaps) - min(gaps) <= 1                               # even spacing, up to rounding


def test_teacher_diagonal_equals_a_hand_gather(tiny_teacher):
    model, tok = load_checkpoint(str(tiny_teacher.teacher))
    records = read_records(tiny_teacher.train)[:3]
    seqs = [teacher_sequence(tok, r) for r in records]
    batch = teacher_batch(tok, seqs)
    first = torch.tensor([s.prompt_len - 1 for s in seqs])
    last = torch.tensor([s.anchor for s in seqs])
    got = teacher_diagonal(model, batch["input_ids"], batch["attention_mask"], first, last)
    L = model.config.num_hidden_layers
    assert got.shape == (3, L, model.config.hidden_size)
    with torch.no_grad():
        hidden = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True).hidden_states
    for b, s in enumerate(seqs):
        for l in range(L):
            t = round(s.prompt_len - 1 + l * (s.anchor - s.prompt_len + 1) / (L - 1))
            h = hidden[l][b, t]
            torch.testing.assert_close(got[b, l], (h - h.mean()) / torch.sqrt(h.var(unbiased=False) + 1e-5))


def test_emulation_loss_is_zero_at_the_teachers_states_and_half_the_squared_error_otherwise(tiny_teacher, monkeypatch):
    """Phase 2's loss with the 'teacher' states replaced by the emulator's own outputs is 0; shifted by
    1 in every coordinate it is L x d / 2 (the sum over layers and hidden size of 1 / 2)."""
    records = read_records(tiny_teacher.train)[:8]
    student, tok, _ = build(tiny_teacher, records)
    with torch.no_grad():
        b = student_batch(tok, records, 0)
        own = student.vertical.emulate(b.prompt_ids, b.prompt_mask).float()
    ctx = RecipeContext(student, tok, records, torch.device("cpu"), 0, 3, teacher=str(tiny_teacher.teacher))
    args = DistillConfig(method="icot_kd", steps=3, mind_reading_steps=1, emulation_steps=1).args
    idx = [0, 3, 5, 7]
    cfg = student.model.config
    for shift, want in ((0.0, 0.0), (1.0, cfg.num_hidden_layers * cfg.hidden_size / 2)):
        monkeypatch.setattr(icot_kd, "diagonal_states", lambda *a, s=shift: own + s)
        recipe = icot_kd.build(args, ctx)          # keeps the student's emulator (already attached)
        recipe.on_step(1)
        terms = recipe.loss_step(idx)
        assert float(terms["phase"]) == 1
        assert float(terms["loss"].detach()) == pytest.approx(want, abs=1e-5)


def test_mind_reading_replaces_every_layers_input_at_the_questions_last_token(tiny_teacher):
    """With the teacher's states given, each layer's input at the question's last position is
    read_l(state_l), whatever the student computed there; the answer's logits follow the states."""
    records = read_records(tiny_teacher.train)[:4]
    student, tok, _ = build(tiny_teacher, records)
    b = student_batch(tok, records, 0)
    L, d = student.model.config.num_hidden_layers, student.model.config.hidden_size
    states = torch.randn(4, L, d)
    seen = {}
    blocks = list(student.model.model.layers)

    def record(l):
        return lambda m, a, k: seen.__setitem__(l, (a[0] if a else k["hidden_states"])[:, -1].clone())

    with torch.no_grad():
        with student.vertical.substituting(student.model, states):
            # registered after the substitution's hooks: they see each layer's input as it reads it
            handles = [blk.register_forward_pre_hook(record(l), with_kwargs=True) for l, blk in enumerate(blocks)]
            student.model(input_ids=b.prompt_ids, attention_mask=b.prompt_mask)
            for h in handles:
                h.remove()
        for l in range(L):
            torch.testing.assert_close(seen[l], student.vertical.read[l](states[:, l]))
        a = student(b, diagonal=states).task_loss
        c = student(b, diagonal=states + 1).task_loss
    assert float(a) != float(c)


def test_the_coupled_student_answers_from_its_emulator_without_the_teacher(tiny_teacher, tmp_path, monkeypatch):
    """distill -> checkpoint -> evaluate in the DAG's way: the saved student holds its emulator
    (vertical.safetensors) and evaluates with no teacher and no thoughts; at evaluation the states
    come from the emulator (one call per batch), and other states give other logits."""
    out, metrics = tmp_path / "icot_kd", tmp_path / "m.jsonl"
    distill.main(["--method", "icot_kd", "--mind-reading-steps", "2", "--emulation-steps", "2", "--teacher",
                  str(tiny_teacher.teacher), "--records", str(tiny_teacher.train), "--out", str(out), "--metrics",
                  str(metrics), "--steps", "6", "--batch-size", "4", "--log-every", "1", *RUNTIME])
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r["phase"] for r in rows] == [0, 0, 1, 1, 2, 2]
    assert all(math.isfinite(r["loss"]) and r["flops"] > 0 for r in rows)
    assert "emulation" in rows[2] and "task" in rows[4]
    loaded, tok = LatentStudent.load(out)
    assert loaded.latent_steps == 0 and isinstance(loaded.vertical, Vertical)
    assert json.loads((out / "latent.json").read_text())["vertical"] == {"mixture_size": 1, "mixture_temperature": 0.05}
    calls = []
    real = Vertical.emulate
    monkeypatch.setattr(Vertical, "emulate", lambda self, *a: calls.append(1) or real(self, *a))
    summary = evaluate.run(evaluate.EvaluateConfig(method="icot_kd", max_new_tokens=4, threads=1, device="cpu",
                                                   batch_size=5), str(out), str(tiny_teacher.test), str(tmp_path / "e.jsonl"))
    assert summary["n"] == 12 and summary["latent_steps"] == 0 and len(calls) == 3     # 12 problems, batches of 5
    records = read_records(tiny_teacher.test)[:4]
    b = student_batch(tok, records, 0)
    loaded.eval()
    with torch.no_grad():
        emulated = real(loaded.vertical, b.prompt_ids, b.prompt_mask)
        _, _, _, own, _ = loaded._think(b.prompt_ids, b.prompt_mask, None)
        _, _, _, same, _ = loaded._think(b.prompt_ids, b.prompt_mask, None, diagonal=emulated)
        _, _, _, other, _ = loaded._think(b.prompt_ids, b.prompt_mask, None, diagonal=emulated.flip(0))
    torch.testing.assert_close(own, same)
    assert not torch.allclose(own, other)
    # the round trip keeps every tensor; a missing emulator file is a clear error
    torch.testing.assert_close(loaded.vertical.state_dict(), LatentStudent.load(out)[0].vertical.state_dict())
    (out / "vertical.safetensors").unlink()
    with pytest.raises(ArtifactError, match="vertical.safetensors is missing"):
        LatentStudent.load(out)


def test_phases_flops_and_a_frozen_emulator(tiny_teacher):
    """Steps 0 / 1 / 2 train phases 1 / 2 / 3, the optimizer reset at each change; a step's FLOPs are
    6 x the parameters it trains x their positions; with fix_emulator no gradient reaches the
    emulator in phase 3 (its reading MLPs still train)."""
    assert [icot_kd.phase_at(s, DistillConfig(method="icot_kd", steps=9, mind_reading_steps=2,
                                              emulation_steps=3).args) for s in range(7)] == \
        ["mind_reading"] * 2 + ["emulation"] * 3 + ["coupled"] * 2
    records = read_records(tiny_teacher.train)[:8]
    student, tok, recipe = build(tiny_teacher, records, fix_emulator=True)
    v = student.vertical
    reader = num_params(student.model) + sum(p.numel() for p in v.read.parameters())
    emulator = sum(p.numel() for p in v.parameters()) - sum(p.numel() for p in v.read.parameters())
    assert emulator > num_params(v.emulator)            # heads, mixture, LSTM and attention count too
    idx = [0, 1, 2, 3]
    b = student_batch(tok, [records[i] for i in idx], 0)
    full, prompt = b.prompt_ids.numel() + b.suffix_ids.numel(), b.prompt_ids.numel()
    resets = [recipe.on_step(s) for s in range(3)]
    assert resets == [False, True, True]
    recipe.on_step(0)
    assert float(recipe.loss_step(idx)["flops"]) == 6 * reader * full
    recipe.on_step(1)
    assert float(recipe.loss_step(idx)["flops"]) == 6 * emulator * prompt
    recipe.on_step(2)
    terms = recipe.loss_step(idx)
    assert float(terms["flops"]) == 6 * reader * full + 6 * emulator * prompt
    terms["loss"].backward()
    assert all(p.grad is None for n, p in v.named_parameters() if not n.startswith("read."))
    assert all(p.grad is not None for p in v.read.parameters())
    assert student.model.model.layers[0].mlp.down_proj.weight.grad is not None


def test_icot_kd_knobs():
    args = DistillConfig(method="icot_kd").args
    assert (args.mind_reading_steps, args.emulation_steps, args.diagonal, args.mixture_size) == (300, 300, "diagonal", 1)
    with pytest.raises(ValueError, match=re.escape("steps (600) must exceed mind_reading_steps + emulation_steps (300 + 300)")):
        DistillConfig(method="icot_kd", steps=600)
    with pytest.raises(ValueError, match="latent_steps must be 0"):
        DistillConfig(method="icot_kd", latent_steps=2)
    with pytest.raises(ValueError, match="mixture_size must be >= 1"):
        DistillConfig(method="icot_kd", mixture_size=0)
    with pytest.raises(ValueError, match="alpha is a knob of lori and no_cot, not of method 'icot_kd'"):
        DistillConfig(method="icot_kd", alpha=1.0)
