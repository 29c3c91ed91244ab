"""Step anchors for every latent method (lori/training/step_info.py): the targets in the core and in
full space against hand computations, the loss at equality, and Coconut / CODI / LoRi (full space)
trained with them through the distill stage."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lori import distill, dump_hidden, factorize, targets
from lori.artifacts.factors import load_factors
from lori.artifacts.targets import read_targets
from lori.data.records import read_records
from lori.distill import DistillConfig
from lori.model.loading import load_checkpoint
from lori.model.sequences import teacher_batch, teacher_sequence
from lori.training.step_info import (
    StepTargets,
    core_step_targets,
    full_step_targets,
    record_step_lengths,
    record_step_points,
    states_at,
)
from tests.tiny import RUNTIME as RT


@pytest.fixture(scope="module")
def lowrank(tmp_path_factory, tiny_teacher):
    """The tiny teacher's factors (ranks 2 x 4, every block's output) and training targets."""
    root = tmp_path_factory.mktemp("step_info")
    hidden, factors, tgt = root / "calib.zarr", root / "factors.zarr", root / "targets.zarr"
    dump_hidden.main(["--teacher", str(tiny_teacher.teacher), "--records", str(tiny_teacher.train), "--out",
                      str(hidden), "--calibration-size", "16", "--batch-size", "8", *RT])
    factorize.main(["--hidden", str(hidden), "--out", str(factors), "--rank-layer", "2", "--rank-hidden", "4"])
    targets.main(["--teacher", str(tiny_teacher.teacher), "--records", str(tiny_teacher.train), "--factors",
                  str(factors), "--out", str(tgt), "--batch-size", "16", *RT])
    return {"root": root, "factors": str(factors), "targets": str(tgt), "teacher": str(tiny_teacher.teacher),
            "train": str(tiny_teacher.train)}


def test_full_space_step_targets_equal_a_hand_computation(lowrank):
    """step_anchor_space: full = the teacher's states at each step's result token, at the factors'
    layers, normalised by the factors (centred, divided by each layer's scale), not projected."""
    model, tok = load_checkpoint(lowrank["teacher"])
    records = read_records(lowrank["train"])[:5]
    factors, _ = load_factors(lowrank["factors"])
    lengths, points = record_step_lengths(tok, records), record_step_points(tok, records)
    got = full_step_targets(model, tok, records, factors, lengths, "result", points, batch_size=2)
    assert got.space == "full" and got.count.tolist() == [len(r.steps) for r in records]
    model.eval()
    for i, r in enumerate(records):
        seq = teacher_sequence(tok, r)
        with torch.no_grad():
            hs = model(**teacher_batch(tok, [seq]), output_hidden_states=True).hidden_states
        start = seq.prompt_len
        for j, (n, p) in enumerate(zip(lengths[i], points[i])):
            h = torch.stack([hs[l][0, start + p] for l in factors.layers])            # [L, d]
            want = (h - factors.mean) / factors.scale[:, None]
            torch.testing.assert_close(got.states[i, j], want, rtol=1e-4, atol=1e-5)
            start += n
        assert got.states[i, len(r.steps):].abs().sum() == 0                      # padding stays zero
    # in the core, the same summaries projected: what the targets store gives
    store = read_targets(lowrank["targets"], [r.id for r in read_records(lowrank["train"])])
    core = core_step_targets(store.core, store.offsets, record_step_lengths(tok, read_records(lowrank["train"])),
                             "result", record_step_points(tok, read_records(lowrank["train"])))
    projected = torch.einsum("njld,lr,ds->njrs", got.states[:, :2], factors.U_layer, factors.U_hidden)
    torch.testing.assert_close(core.states[:5, :2], projected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("space", ["core", "full"])
def test_step_loss_is_zero_when_each_matched_thought_holds_its_step(space):
    """StepTargets.loss maps the student's raw states into its space (core: projected; full:
    normalised) and is 0 when the matched thoughts hold the targets, > 0 when one moves."""
    from lori.lowrank.maths import Factors

    g = torch.Generator().manual_seed(0)
    L, d, rl, rd = 3, 8, 2, 4
    factors = Factors(torch.linalg.qr(torch.randn(L, rl, generator=g))[0],
                      torch.linalg.qr(torch.randn(d, rd, generator=g))[0],
                      torch.randn(L, d, generator=g), torch.rand(L, generator=g) + 0.5, [1, 2, 3])
    thoughts = torch.randn(2, 4, L, d, generator=g)                           # raw hidden states
    count = torch.tensor([2, 3])
    slots = [[1, 3], [1, 2, 3]]                                               # step_slots(2, 4), step_slots(3, 4)
    mapped = factors.project(thoughts) if space == "core" else factors.normalize(thoughts)
    states = torch.zeros(2, 3, *mapped.shape[2:])
    for b, row in enumerate(slots):
        for j, k in enumerate(row):
            states[b, j] = mapped[b, k]
    st = StepTargets(states, count, space)
    assert st.slots([0, 1], 4).tolist() == [[1, 3, -1], [1, 2, 3]]
    assert st.loss(thoughts, [0, 1], factors).item() == pytest.approx(0.0, abs=1e-10)
    moved = thoughts.clone()
    moved[1, 2] += 1.0
    assert st.loss(moved, [0, 1], factors).item() > 1e-4
    moved = thoughts.clone()
    moved[0, 0] += 1.0                                                        # thought 0 of row 0 is matched to no step
    assert st.loss(moved, [0, 1], factors).item() == pytest.approx(0.0, abs=1e-10)


def test_states_at_picks_the_factor_layers():
    states = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)   # layers 0..3
    torch.testing.assert_close(states_at(states, [0, 1, 2, 3], [1, 3]), states[:, :, [1, 3]])
    with pytest.raises(ValueError, match="need"):
        states_at(states, [0, 1, 2, 3], [4])


@pytest.mark.parametrize("method, knobs", [
    ("coconut", {"max_stage": 2, "steps_per_stage": 3, "thoughts_per_step": 1, "step_summary": "result"}),
    ("codi", {"latent_steps": 3}),
    ("lori", {"latent_steps": 3, "alpha": 0.0, "gamma": 0.0, "step_anchor_space": "full", "step_summary": "result"}),
])
def test_every_latent_method_trains_with_step_anchors(lowrank, method, knobs):
    """One config line gives a method step anchors: the distill stage loads the step targets, the
    recipe logs L_step, and it falls while the student learns (Coconut from its first stage on)."""
    steps = 9
    cfg = DistillConfig(method=method, steps=steps, batch_size=8, log_every=1, lr=3e-3, seed=0, threads=1,
                        device="cpu", checkpoint_every=0, step_anchor=1.0, **knobs)
    assert cfg.needs_targets
    out = lowrank["root"] / f"{method}_steps"
    rows = distill.run(cfg, lowrank["teacher"], lowrank["train"], str(out), lowrank["targets"], lowrank["factors"],
                       str(lowrank["root"] / f"{method}.jsonl"))
    terms = [r["step_anchor"] for r in rows]
    assert len(terms) == steps and all(math.isfinite(t) and t > 0 for t in terms)
    assert np.mean(terms[-3:]) < np.mean(terms[:3])
    if method == "coconut":
        assert [int(r["stage"]) for r in rows] == [1] * 3 + [2] * 3 + [3] * 3
    # the same method without step anchors reads nothing of the dumped teacher
    plain = DistillConfig(method=method, steps=steps, **{k: v for k, v in knobs.items() if not k.startswith("step_")})
    assert not plain.needs_targets or method == "lori"
