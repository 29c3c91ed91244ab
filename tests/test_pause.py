"""The pause-token control (``method: pause``, lori/training/recipes/pause.py; ``feedback: pause`` in
lori/model/latent.py): K learned filler embeddings where a latent student has its thoughts, pinned
with real numbers on the tiny teacher."""
from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

from lori import distill, evaluate
from lori.artifacts.store import ArtifactError
from lori.data.records import Record, read_records
from lori.distill import DistillConfig
from lori.model.latent import LatentStudent, init_pause
from lori.model.loading import num_params
from lori.model.sequences import student_batch
from lori.training.loop import step_flops
from lori.training.recipes import pause
from lori.training.recipes.base import RecipeContext
from tests.tiny import RUNTIME

K = 3
FOUR = Record("r4", "Tom has 8 rocks . he loses 4 . he finds 52 more . he gets 2 times as many . how many now ?",
              ["<<8-4=4>>", "<<4+52=56>>", "<<56*2=112>>", "<<112-12=100>>"], "100")
TWO = Record("r2", "Sam has 7 stamps . he gets 5 more . he gets 2 times as many . how many now ?",
             ["<<7+5=12>>", "<<12*2=24>>"], "24")


def pause_student(teacher, k: int = K, seed: int = 0):
    """The tiny teacher wrapped as a K-pause student as the distill stage builds it, under ``seed``."""
    torch.manual_seed(seed)
    return distill.build_student(DistillConfig(method="pause", latent_steps=k, threads=1, device="cpu"), str(teacher))


def test_pause_student_feeds_its_learned_embeddings_whatever_the_question(tiny_teacher):
    model, tok = pause_student(tiny_teacher.teacher)
    emb = model.model.get_input_embeddings().weight
    assert model.projection is None and model.feedback == "pause" and model.pause.shape == (K, emb.shape[1])
    assert model.pause.requires_grad and any(p is model.pause for p in model.parameters())
    # drawn like token embeddings under the run's seed: the same draw again, another seed another one
    torch.manual_seed(0)
    assert torch.equal(model.pause.detach(), init_pause(model.model, K))
    assert not torch.equal(model.pause, pause_student(tiny_teacher.teacher, seed=1)[0].pause)
    assert model.pause.std().item() == pytest.approx(emb.std().item(), rel=0.3)     # 96 draws of N(0, std(emb))
    # two different questions: the very same K inputs, and they are the pause embeddings
    batch = student_batch(tok, [FOUR, TWO], K)
    fed = model.thought_inputs(batch)
    assert fed.shape == (2, K, emb.shape[1])
    assert torch.equal(fed[0], model.pause.detach()) and torch.equal(fed[1], model.pause.detach())
    # every last hidden state shifted (the prompt's and each thought's, through the final norm):
    # nothing fed changes; a projection student's inputs, under the same shift, do
    projecting, _ = distill.build_student(DistillConfig(method="codi", latent_steps=K, threads=1, device="cpu"),
                                          str(tiny_teacher.teacher))
    before = projecting.thought_inputs(batch)
    hooks = [m.model.model.norm.register_forward_hook(lambda mod, args, out: out + 3.0) for m in (model, projecting)]
    try:
        assert torch.equal(model.thought_inputs(batch), fed)
        assert (projecting.thought_inputs(batch) - before).abs().max() > 1e-3
    finally:
        for h in hooks:
            h.remove()
    # a given thought_inputs still overrides them (the thought-shuffle test's path)
    other = torch.randn_like(fed)
    recorded: list[torch.Tensor] = []
    model._think(batch.prompt_ids, batch.prompt_mask, None, other, record_inputs=recorded)
    assert torch.equal(torch.stack(recorded, 1), other)


def test_pause_embeddings_get_the_gradient_and_learn(tiny_teacher):
    model, tok = pause_student(tiny_teacher.teacher)
    records = read_records(tiny_teacher.train)
    cfg = DistillConfig(method="pause", latent_steps=K, threads=1, device="cpu")
    assert not cfg.needs_targets
    recipe = pause.build(cfg.args, RecipeContext(model, tok, records, "cpu", cfg.seed, cfg.steps))
    idx = [0, 1, 2, 3]
    terms = recipe.loss_step(idx)
    # answer cross-entropy only; the FLOPs count the K pause positions of every example
    assert set(terms) == {"loss", "task", "flops"} and terms["loss"].item() == terms["task"].item()
    assert math.isfinite(terms["loss"].item()) and terms["loss"].item() > 0
    batch = student_batch(tok, [records[i] for i in idx], K, idx)
    positions = batch.prompt_ids.numel() + len(idx) * K + batch.suffix_ids.numel()
    assert terms["flops"].item() == pytest.approx(step_flops(num_params(model), positions))
    terms["loss"].backward()
    assert (model.pause.grad.norm(dim=1) > 0).all()            # each of the K embeddings gets gradient
    # a step on the pause embeddings alone moves every one of them and lowers this batch's loss
    start = model.pause.detach().clone()
    torch.optim.SGD([model.pause], lr=0.5).step()
    assert (model.pause.detach() - start).abs().amax(dim=1).gt(0).all()
    with torch.no_grad():
        assert recipe.loss_step(idx)["loss"].item() < terms["loss"].item()


def test_pause_checkpoint_round_trips_and_refuses_a_missing_or_misfit_file(tiny_teacher, tmp_path):
    model, tok = pause_student(tiny_teacher.teacher)
    with torch.no_grad():
        model.pause.mul_(3.0)                                  # not the init: what is saved is what was trained
    out = tmp_path / "s"
    model.save(out, tok)
    assert json.loads((out / "latent.json").read_text()) == {"latent_steps": K, "feedback": "pause"}
    assert (out / "pause.safetensors").exists() and not (out / "projection.safetensors").exists()
    loaded, tok2 = LatentStudent.load(out)
    assert loaded.feedback == "pause" and loaded.latent_steps == K and loaded.projection is None
    assert torch.equal(loaded.pause, model.pause)
    batch = student_batch(tok, [FOUR, TWO], K)
    assert torch.equal(loaded.thought_inputs(batch), model.thought_inputs(batch))
    model.eval(), loaded.eval()
    assert [g.text for g in loaded.generate(batch, 8, tok2)] == [g.text for g in model.generate(batch, 8, tok)]
    missing = tmp_path / "missing"
    shutil.copytree(out, missing)
    (missing / "pause.safetensors").unlink()
    with pytest.raises(ArtifactError, match="pause.safetensors is missing or unreadable"):
        LatentStudent.load(missing)
    misfit = tmp_path / "misfit"
    shutil.copytree(out, misfit)
    save_file({"pause": torch.zeros(K - 1, model.pause.shape[1])}, str(misfit / "pause.safetensors"))
    with pytest.raises(ArtifactError, match=rf"holds \[{K - 1}, 32\] pause embeddings"):
        LatentStudent.load(misfit)


def test_pause_config_knobs():
    assert DistillConfig(method="pause").args.latent_steps == 6         # LoRi's default K
    with pytest.raises(ValueError, match="pause needs latent_steps >= 1"):
        DistillConfig(method="pause", latent_steps=0)
    with pytest.raises(ValueError, match="alpha is a knob of lori and no_cot, not of method 'pause'"):
        DistillConfig(method="pause", alpha=0.5)
    with pytest.raises(ValueError, match=re.escape("feedback must be projection | hidden | pause, got 'tokens'")):
        LatentStudent(None, 2, 0, 1, feedback="tokens")


def test_pause_trains_saves_and_evaluates_with_a_zero_shuffle_drop(tiny_teacher, tmp_path):
    """distill -> checkpoint -> evaluate and the logit lens, as any latent student; records without CoT
    are fine (it never reads the CoT). Another problem's thoughts are the same pause embeddings, so
    the thought-shuffle answers are the plain answers, problem by problem."""
    from lori.analysis.logit_lens import decode_thoughts

    out, metrics = tmp_path / "pause", tmp_path / "pause_metrics.jsonl"
    distill.main(["--method", "pause", "--latent-steps", "2", "--teacher", str(tiny_teacher.teacher),
                  "--records", str(tiny_teacher.train), "--out", str(out), "--metrics", str(metrics),
                  "--steps", "3", "--batch-size", "4", "--log-every", "1", *RUNTIME])
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["loss"]) and r["flops"] > 0 for r in rows)
    loaded, tok = LatentStudent.load(out)
    assert loaded.feedback == "pause" and loaded.pause.shape == (2, 32)
    assert len(decode_thoughts(loaded.eval(), tok, FOUR.question)) == 2
    summary = evaluate.run(evaluate.EvaluateConfig(method="pause", max_new_tokens=4, threads=1, device="cpu"),
                           str(out), str(tiny_teacher.test), str(tmp_path / "eval.jsonl"))
    assert summary["latent_steps"] == 2 and summary["thought_shuffle"]["drop"] == 0.0
    evals = [json.loads(l) for l in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert all(r["correct_shuffled"] == r["correct"] for r in evals)
