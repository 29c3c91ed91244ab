"""The shared training loop: checkpoints, exact resume, the non-finite guard."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from lori.training.loop import (
    NonFiniteLoss,
    OptimConfig,
    batches,
    checkpoint_dir,
    fingerprint,
    fit,
    length_curriculum_batches,
)


class Killed(RuntimeError):
    """Stands in for a kill: raised from inside the loop at a given step."""


def make_problem(seed: int = 0):
    """A small regression model whose loss uses the torch RNG (dropout), so RNG restore matters."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    x, y = torch.randn(40, 6), torch.randn(40, 1)
    calls = {"n": 0}

    def loss_step(idx, kill_at=None, nan_at=None):
        calls["n"] += 1
        if kill_at is not None and calls["n"] == kill_at + 1:
            raise Killed(f"killed at step {kill_at}")
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        if nan_at is not None and calls["n"] == nan_at + 1:
            loss = loss * float("nan")
        return {"loss": loss, "mse": loss.detach()}

    return model, loss_step


CFG = OptimConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=3, log_every=2, checkpoint_every=4)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_equals_uninterrupted_bitwise(tmp_path):
    model, step_fn = make_problem()
    rows = fit(model, step_fn, 40, CFG, seed=3, ckpt=tmp_path / "a.ckpt", run_id="r")
    straight = state(model)

    model, step_fn = make_problem()
    with pytest.raises(Killed):
        fit(model, lambda i: step_fn(i, kill_at=10), 40, CFG, seed=3, ckpt=tmp_path / "b.ckpt", run_id="r")
    meta = json.loads((tmp_path / "b.ckpt" / "meta.json").read_text())
    assert meta["step"] == 8                     # the last checkpoint before the kill
    model, step_fn = make_problem()              # a fresh process: new model, RNG re-seeded
    resumed_rows = fit(model, step_fn, 40, CFG, seed=3, ckpt=tmp_path / "b.ckpt", run_id="r")
    for k, v in state(model).items():
        assert torch.equal(v, straight[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if k != "sec_per_step"} for r in rs]  # noqa: E731
    assert strip(resumed_rows) == strip(rows)


def test_checkpoint_of_another_run_is_ignored(tmp_path, caplog):
    model, step_fn = make_problem()
    with pytest.raises(Killed):
        fit(model, lambda i: step_fn(i, kill_at=5), 40, CFG, seed=3, ckpt=tmp_path / "c.ckpt", run_id="old")
    model, step_fn = make_problem()
    steps = []
    with caplog.at_level(logging.WARNING, logger="lori.training.loop"):
        fit(model, lambda i: steps.append(i) or step_fn(i), 40, CFG, seed=3, ckpt=tmp_path / "c.ckpt", run_id="new")
    assert "another run" in caplog.text and len(steps) == CFG.steps   # started over from step 0


def test_unreadable_checkpoint_is_ignored_with_a_warning(tmp_path, caplog):
    model, step_fn = make_problem()
    with pytest.raises(Killed):
        fit(model, lambda i: step_fn(i, kill_at=5), 40, CFG, seed=3, ckpt=tmp_path / "d.ckpt", run_id="r")
    (tmp_path / "d.ckpt" / "state.pt").write_bytes(b"garbage")
    model, step_fn = make_problem()
    with caplog.at_level(logging.WARNING, logger="lori.training.loop"):
        fit(model, step_fn, 40, CFG, seed=3, ckpt=tmp_path / "d.ckpt", run_id="r")
    assert "unreadable checkpoint" in caplog.text


def test_half_restorable_checkpoint_leaves_a_fresh_start(tmp_path):
    """Weights load but the optimizer state does not fit: the run must equal one without a checkpoint."""
    model, step_fn = make_problem()
    fit(model, step_fn, 40, CFG, seed=3)
    fresh = state(model)
    model, step_fn = make_problem()
    with pytest.raises(Killed):
        fit(model, lambda i: step_fn(i, kill_at=5), 40, CFG, seed=3, ckpt=tmp_path / "g.ckpt", run_id="r")
    blob = torch.load(tmp_path / "g.ckpt" / "state.pt", weights_only=True)
    blob["optimizer"]["param_groups"] = []            # readable, but not this optimizer's
    torch.save(blob, tmp_path / "g.ckpt" / "state.pt")
    model, step_fn = make_problem()
    fit(model, step_fn, 40, CFG, seed=3, ckpt=tmp_path / "g.ckpt", run_id="r")
    assert all(torch.equal(v, fresh[k]) for k, v in state(model).items())


def test_nan_loss_stops_and_never_overwrites_the_checkpoint(tmp_path):
    model, step_fn = make_problem()
    ckpt = tmp_path / "e.ckpt"
    with pytest.raises(NonFiniteLoss, match=r"step 6: \{'loss': nan, 'mse': nan\}; batch example indices \["):
        fit(model, lambda i: step_fn(i, nan_at=6), 40, CFG, seed=3, ckpt=ckpt, run_id="r")
    assert json.loads((ckpt / "meta.json").read_text())["step"] == 4


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    """A finite loss with an infinite gradient (sqrt at 0) turns the weights NaN: no checkpoint."""
    model, step_fn = make_problem()
    model.register_parameter("gate", torch.nn.Parameter(torch.zeros(1)))   # differentiated at 0 by the poisoned step
    calls = []

    def poisoned(idx):
        calls.append(idx)
        terms = step_fn(idx)
        if len(calls) == 2:
            terms["loss"] = terms["loss"] + model.gate.sqrt().sum()   # value 0, gradient inf
        return terms

    cfg = OptimConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=0, log_every=2, checkpoint_every=2, grad_clip=0)
    ckpt = tmp_path / "f.ckpt"
    with pytest.raises(NonFiniteLoss, match="non-finite parameters after step 2"):
        fit(model, poisoned, 40, cfg, seed=3, ckpt=ckpt, run_id="r")
    assert not ckpt.exists()


def test_checkpoint_dir_and_fingerprint(tmp_path):
    assert checkpoint_dir(tmp_path / "students" / "lori") == tmp_path / "students" / "lori.ckpt"
    data = tmp_path / "train.jsonl"
    data.write_text("a\n")
    before = fingerprint({"lr": 1}, str(data))
    assert fingerprint({"lr": 1}, str(data)) == before and fingerprint({"lr": 2}, str(data)) != before
    data.write_text("changed\n")
    assert fingerprint({"lr": 1}, str(data)) != before


def test_grad_accum_gives_the_whole_batch_update_and_the_same_flops():
    """grad_accum=2 runs two micro-batches of B/2 per step: for a mean-over-examples loss the update is
    the one batch of B gives (to float rounding), and the step's FLOPs are the sum of its halves."""
    init = {}

    def run(grad_accum: int):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        init.update(state(model))
        x, y = torch.randn(40, 6), torch.randn(40, 1)
        sizes = []

        def loss_step(idx):
            sizes.append(len(idx))
            return {"loss": torch.nn.functional.mse_loss(model(x[idx]), y[idx]), "flops": torch.tensor(100.0 * len(idx))}

        cfg = OptimConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, log_every=1, checkpoint_every=0,
                          grad_accum=grad_accum)
        return model, fit(model, loss_step, 40, cfg, seed=3), sizes

    whole, rows1, sizes1 = run(1)
    accum, rows2, sizes2 = run(2)
    assert set(sizes1) == {8} and set(sizes2) == {4} and len(sizes2) == 2 * len(sizes1)
    for (name, a), b in zip(whole.named_parameters(), accum.parameters()):
        assert (a - init[name]).abs().max() > 1e-3, name            # six steps moved every weight
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert [r["flops"] for r in rows2] == [r["flops"] for r in rows1] == [800.0] * 6
    assert [r["loss"] for r in rows2] == pytest.approx([r["loss"] for r in rows1], rel=1e-5)
    with pytest.raises(ValueError, match="not divisible by 1 process"):
        fit(whole, lambda idx: {"loss": whole(torch.zeros(len(idx), 6)).sum()}, 40,
            OptimConfig(steps=1, batch_size=6, grad_accum=4), seed=0)


# ---------------------------------------------------------------- length curriculum
LENGTHS = [1, 3, 2, 1, 4, 2, 3, 1, 2, 4] * 4      # 40 examples, CoT lengths 1-4


def test_length_curriculum_brings_in_one_length_per_stage_then_every_example():
    import itertools

    per_stage, stream = 3, length_curriculum_batches(LENGTHS, 8, seed=5, steps_per_stage=3)
    drawn = list(itertools.islice(stream, 3 * per_stage + 6))
    for stage, level in enumerate((1, 2, 3)):
        stage_batches = drawn[stage * per_stage:(stage + 1) * per_stage]
        assert all(max(LENGTHS[i] for i in b) <= level for b in stage_batches)
        assert any(LENGTHS[i] == level for b in stage_batches for i in b)   # the new length does come in
    # after the ramp: exactly the plain seeded epochs of the same seed, over all 40 examples
    assert drawn[3 * per_stage:] == list(itertools.islice(batches(40, 8, 5), 6))
    # one length only: no ramp at all
    assert list(itertools.islice(length_curriculum_batches([2] * 40, 8, 5, 3), 4)) == \
        list(itertools.islice(batches(40, 8, 5), 4))


def test_resume_with_a_length_curriculum_equals_uninterrupted_bitwise(tmp_path):
    """The curriculum's stream is a pure function of its arguments: replayed to the checkpoint's step
    on resume, it gives the uninterrupted run's batches."""
    def stream():
        return length_curriculum_batches(LENGTHS, CFG.batch_size, 3, steps_per_stage=3)

    model, step_fn = make_problem()
    fit(model, step_fn, 40, CFG, seed=3, ckpt=tmp_path / "a.ckpt", run_id="r", stream=stream())
    straight = state(model)
    model, step_fn = make_problem()
    with pytest.raises(Killed):
        fit(model, lambda i: step_fn(i, kill_at=6), 40, CFG, seed=3, ckpt=tmp_path / "b.ckpt", run_id="r",
            stream=stream())
    model, step_fn = make_problem()
    fit(model, step_fn, 40, CFG, seed=3, ckpt=tmp_path / "b.ckpt", run_id="r", stream=stream())
    assert all(torch.equal(v, straight[k]) for k, v in state(model).items())
    model, step_fn = make_problem()              # and the curriculum does change the training
    fit(model, step_fn, 40, CFG, seed=3)
    assert not all(torch.equal(v, straight[k]) for k, v in state(model).items())
