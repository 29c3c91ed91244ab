"""PEFT LoRA (config `lora:`): only adapters (and a student's projection) train, checkpoints are
saved merged and load with the normal loaders, and a killed LoRA run resumes bitwise on CPU."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft", reason="pip install -e '.[lora]'")

from lori import distill, teacher_sft  # noqa: E402
from lori.model.latent import LatentStudent  # noqa: E402
from lori.model.loading import load_checkpoint  # noqa: E402
from lori.training.lora import add_lora  # noqa: E402
from lori.training.loop import OptimConfig, fit  # noqa: E402
from tests.tiny import RUNTIME, TINY  # noqa: E402

SPEC = {"rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_student_trains_only_adapters_and_projection_and_saves_merged(tiny_teacher, tmp_path, monkeypatch):
    seen = {}

    def watched_fit(module, *args, **kwargs):
        seen["before"] = snapshot(module)
        seen["trainable"] = {n for n, p in module.named_parameters() if p.requires_grad}
        rows = real_fit(module, *args, **kwargs)
        seen["after"] = snapshot(module)
        return rows

    real_fit = fit
    monkeypatch.setattr("lori.training.loop.fit", watched_fit)     # distill imports it when it runs
    cfg = distill.DistillConfig(method="lori", alpha=0.0, gamma=0.0, latent_steps=2, steps=3, batch_size=4, lr=1e-2,
                                warmup_steps=0, log_every=1, lora=SPEC, threads=1, device="cpu")
    out = tmp_path / "students" / "lori"
    distill.run(cfg, str(tiny_teacher.teacher), str(tiny_teacher.train), str(out))

    before, after = seen["before"], seen["after"]
    assert all(".lora_" in n or n.startswith("projection.") for n in seen["trainable"]), seen["trainable"]
    assert any(n.startswith("projection.") for n in seen["trainable"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k or k.startswith("projection.") for k in changed), changed
    assert any(".lora_B." in k for k in changed) and any(k.startswith("projection.") for k in changed)

    # the checkpoint: no adapter left, loads with the normal loader, and W = W0 + alpha/r * B A
    student, _ = LatentStudent.load(out)
    saved = student.model.state_dict()
    assert not any("lora" in k for k in saved)
    name = "model.layers.0.self_attn.q_proj"
    base = after[f"model.{name}.base_layer.weight"]
    delta = after[f"model.{name}.lora_B.default.weight"] @ after[f"model.{name}.lora_A.default.weight"]
    torch.testing.assert_close(saved[f"{name}.weight"], base + SPEC["alpha"] / SPEC["rank"] * delta)
    untouched = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(saved[untouched], load_checkpoint(tiny_teacher.teacher)[0].state_dict()[untouched])
    assert json.loads((out / "train_config.json").read_text())["lora"] == SPEC


def test_teacher_with_lora_saves_a_plain_merged_checkpoint(tiny_teacher, tmp_path):
    out = tmp_path / "teacher"
    teacher_sft.main(["--train", str(tiny_teacher.train), "--out", str(out), "--scratch", TINY, "--steps", "2",
                      "--batch-size", "4", "--lora", json.dumps(SPEC), *RUNTIME])
    model, _ = load_checkpoint(out)
    assert not any("lora" in k for k in model.state_dict())


class Killed(RuntimeError):
    pass


def tiny_lora_problem():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, **json.loads(TINY)))
    add_lora(model, SPEC)            # dropout 0.1: the adapters consume RNG, so its restore matters
    data = torch.randint(0, 50, (24, 10))
    calls = {"n": 0}

    def loss_step(idx, kill_at=None):
        calls["n"] += 1
        if kill_at is not None and calls["n"] == kill_at + 1:
            raise Killed
        return {"loss": model(input_ids=data[idx], labels=data[idx]).loss}

    return model, loss_step


def test_killed_lora_run_resumes_bitwise(tmp_path):
    cfg = OptimConfig(steps=8, batch_size=4, lr=1e-2, warmup_steps=0, log_every=2, checkpoint_every=3)
    model, step = tiny_lora_problem()
    rows = fit(model, step, 24, cfg, seed=1, ckpt=tmp_path / "a.ckpt", run_id="r")
    straight = snapshot(model)

    model, step = tiny_lora_problem()
    with pytest.raises(Killed):
        fit(model, lambda i: step(i, kill_at=7), 24, cfg, seed=1, ckpt=tmp_path / "b.ckpt", run_id="r")
    model, step = tiny_lora_problem()
    resumed = fit(model, step, 24, cfg, seed=1, ckpt=tmp_path / "b.ckpt", run_id="r")
    for k, v in snapshot(model).items():
        assert torch.equal(v, straight[k]), k
    assert [r["loss"] for r in resumed] == [r["loss"] for r in rows]
