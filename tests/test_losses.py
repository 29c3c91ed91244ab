"""Tests for lori.training.losses: trajectory moments, the reason loss and anchor losses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lori.training.losses import (
    anchor_loss,
    moments,
    reason_loss,
    step_anchor_loss,
    step_slots,
    step_summaries,
    trajectory_moments,
)

RL, RD = 2, 3


def rand(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))


def test_moments_match_numpy():
    core = rand(3, 7, RL, RD)
    mean, cov = moments(core)
    assert mean.shape == (3, RL * RD) and cov.shape == (3, RL * RD, RL * RD)
    for b in range(3):
        flat = core[b].reshape(7, -1).numpy()
        np.testing.assert_allclose(mean[b].numpy(), flat.mean(0), rtol=1e-12)
        np.testing.assert_allclose(cov[b].numpy(), np.cov(flat.T, bias=True), rtol=1e-10, atol=1e-12)


def test_moments_single_position_has_zero_cov():
    core = rand(2, 1, RL, RD)
    for kind in ("full", "per_layer"):
        mean, cov = moments(core, kind)
        assert torch.isfinite(cov).all() and torch.isfinite(mean).all()
        assert torch.count_nonzero(cov) == 0
        np.testing.assert_allclose(mean.numpy(), core.reshape(2, -1).numpy())


def test_per_layer_cov_is_diagonal_blocks_of_full():
    core = rand(2, 9, RL, RD, seed=1)
    _, full = moments(core, "full")
    _, per = moments(core, "per_layer")
    assert per.shape == (2, RL, RD, RD)
    blocks = full.reshape(2, RL, RD, RL, RD)              # full index l * r_d + j
    for l in range(RL):
        np.testing.assert_allclose(per[:, l].numpy(), blocks[:, l, :, l, :].numpy(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="unknown covariance"):
        moments(core, "diag")


def test_trajectory_moments_ragged_and_length_invariant():
    rng = np.random.default_rng(4)
    lengths = [3, 0, 5, 1]
    trajs = [rng.standard_normal((n, RL, RD)).astype(np.float32) for n in lengths]
    core = np.concatenate(trajs)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for kind in ("full", "per_layer"):
        means, covs = trajectory_moments(core, offsets, kind)
        assert means.dtype == np.float32 and means.shape == (4, RL * RD)
        # empty CoT -> zeros
        assert not means[1].any() and not covs[1].any()
        for i, z in enumerate(trajs):
            if len(z):
                m, c = moments(torch.from_numpy(z)[None], kind)
                np.testing.assert_allclose(means[i], m[0].numpy(), rtol=1e-6)
                np.testing.assert_allclose(covs[i], c[0].numpy(), rtol=1e-5, atol=1e-6)
        # every token repeated k times: same statistics (no token pairing, length invariant)
        for k in (2, 3):
            rep = [np.repeat(z, k, axis=0) for z in trajs]
            m2, c2 = trajectory_moments(np.concatenate(rep), offsets * k, kind)
            np.testing.assert_allclose(m2, means, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(c2, covs, rtol=1e-4, atol=1e-6)
            valid = torch.tensor([n > 0 for n in lengths])
            loss = reason_loss(torch.from_numpy(m2), torch.from_numpy(c2), torch.from_numpy(means),
                               torch.from_numpy(covs), valid=valid)
            assert loss["reason"].item() < 1e-9


def test_reason_loss_zero_at_equality():
    mean, cov = moments(rand(4, 6, RL, RD))
    out = reason_loss(mean.clone(), cov.clone(), mean, cov, w_mean=0.3, w_cov=2.0)
    assert set(out) == {"reason_mean", "reason_cov", "reason"}
    assert out["reason"].item() == 0.0 and out["reason_mean"].item() == 0.0 and out["reason_cov"].item() == 0.0


def test_reason_loss_formula_against_numpy():
    rng = np.random.default_rng(5)
    mu_s, mu_t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    S_s, S_t = rng.standard_normal((3, 4, 4)), rng.standard_normal((3, 4, 4))
    w1, w2 = 0.7, 1.9
    out = reason_loss(*(torch.from_numpy(x) for x in (mu_s, S_s, mu_t, S_t)), w_mean=w1, w_cov=w2)
    # normalisers pooled over the batch (sum of errors / sum of teacher norms)
    m = ((mu_s - mu_t) ** 2).sum() / (mu_t**2).sum()
    c = ((S_s - S_t) ** 2).sum() / (S_t**2).sum()
    assert out["reason_mean"].item() == pytest.approx(m, rel=1e-7)
    assert out["reason_cov"].item() == pytest.approx(c, rel=1e-7)
    assert out["reason"].item() == pytest.approx(w1 * m + w2 * c, rel=1e-7)
    # single example: exactly |mu_S-mu_T|^2/|mu_T|^2 + |S_S-S_T|_F^2/|S_T|_F^2 (weights 1)
    one = reason_loss(*(torch.from_numpy(x[:1]) for x in (mu_s, S_s, mu_t, S_t)))
    exp = (np.linalg.norm(mu_s[0] - mu_t[0]) ** 2 / np.linalg.norm(mu_t[0]) ** 2
           + np.linalg.norm(S_s[0] - S_t[0], "fro") ** 2 / np.linalg.norm(S_t[0], "fro") ** 2)
    assert one["reason"].item() == pytest.approx(exp, rel=1e-7)


def test_reason_loss_valid_mask_excludes_examples():
    mean_t, cov_t = moments(rand(3, 5, RL, RD, seed=6))
    mean_s, cov_s = mean_t.clone(), cov_t.clone()
    mean_s[1] += 100.0
    cov_s[1] -= 50.0
    valid = torch.tensor([True, False, True])
    assert reason_loss(mean_s, cov_s, mean_t, cov_t, valid=valid)["reason"].item() == 0.0
    assert reason_loss(mean_s, cov_s, mean_t, cov_t)["reason"].item() > 1.0
    # nothing valid: a finite zero, not NaN
    none = reason_loss(mean_s, cov_s, mean_t, cov_t, valid=torch.zeros(3, dtype=torch.bool))
    assert none["reason"].item() == 0.0


def test_reason_loss_gradients_flow():
    core_t = rand(2, 6, RL, RD, seed=7)
    mean_t, cov_t = moments(core_t)
    student = rand(2, 4, RL, RD, seed=8).requires_grad_(True)
    for kind in ("full", "per_layer"):
        mt, ct = moments(core_t, kind)
        ms, cs = moments(student, kind)
        loss = reason_loss(ms, cs, mt, ct)["reason"]
        student.grad = None
        loss.backward()
        g = student.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("kind", ["mse", "smooth_l1"])
def test_anchor_loss(kind):
    t = rand(4, 1, RL, RD, seed=9)
    assert anchor_loss(t.clone(), t, kind).item() == 0.0
    s = (t + 0.3 * rand(4, 1, RL, RD, seed=10)).requires_grad_(True)
    loss = anchor_loss(s, t, kind)
    assert loss.item() > 0
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_anchor_loss_values():
    t = torch.tensor([[1.0, 2.0], [2.0, 0.0]])
    s = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    assert anchor_loss(s, t, "mse").item() == pytest.approx(2.0 / 9.0, rel=1e-6)
    # smooth_l1 on (S - T)/std(T): scale-invariant
    a = anchor_loss(s, t, "smooth_l1").item()
    assert anchor_loss(10 * s, 10 * t, "smooth_l1").item() == pytest.approx(a, rel=1e-5)
    std = t.std().item()
    d = np.abs((s - t).numpy() / std)
    exp = np.where(d < 1, 0.5 * d**2, d - 0.5).mean()
    assert a == pytest.approx(exp, rel=1e-6)
    with pytest.raises(ValueError, match="unknown anchor loss"):
        anchor_loss(s, t, "l2")


def test_step_slots_spread_steps_over_thoughts_in_order():
    assert step_slots(3, 6) == [1, 3, 5]
    assert step_slots(2, 6) == [2, 5]
    assert step_slots(4, 6) == [1, 2, 4, 5]
    assert step_slots(1, 6) == [5]
    slots = step_slots(8, 6)                      # more steps than thoughts: shared, still ordered
    assert slots == sorted(slots) and slots[-1] == 5 and len(slots) == 8


def test_step_summaries_mean_and_last():
    core = rand(7, RL, RD).numpy()
    mean = step_summaries(core, [3, 4], "mean")
    np.testing.assert_allclose(mean, np.stack([core[:3].mean(0), core[3:].mean(0)]), rtol=1e-12)
    last = step_summaries(core, [3, 4], "last")
    np.testing.assert_allclose(last, core[[2, 6]])
    # result: the token at each step's point (offsets within the step; out of range -> clipped)
    np.testing.assert_allclose(step_summaries(core, [3, 4], "result", [1, 2]), core[[1, 5]])
    np.testing.assert_allclose(step_summaries(core, [3, 4], "result", [9, -1]), core[[2, 3]])
    with pytest.raises(ValueError, match="one point per step"):
        step_summaries(core, [3, 4], "result")
    with pytest.raises(ValueError, match="do not cover"):
        step_summaries(core, [3, 3])


def test_step_anchor_loss_zero_at_the_matched_thoughts_and_ignores_padding():
    thoughts = rand(2, 6, RL, RD, seed=1)
    slots = torch.tensor([[1, 3, 5], [2, 5, -1]])
    steps = torch.stack([thoughts[0, [1, 3, 5]], torch.cat([thoughts[1, [2, 5]], rand(1, RL, RD, seed=2)])])
    assert step_anchor_loss(thoughts, steps, slots).item() == pytest.approx(0.0, abs=1e-12)
    # moving an unmatched thought changes nothing; moving a matched one does, by the normalised error
    moved = thoughts.clone()
    moved[0, 0] += 5.0
    assert step_anchor_loss(moved, steps, slots).item() == pytest.approx(0.0, abs=1e-12)
    moved[0, 3] += 1.0
    valid = steps[0].pow(2).sum() + steps[1, :2].pow(2).sum()
    assert step_anchor_loss(moved, steps, slots).item() == pytest.approx((RL * RD / valid).item(), rel=1e-9)
