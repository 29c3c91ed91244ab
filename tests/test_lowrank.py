"""Tests for lori.lowrank.maths: streamed mode Grams vs exact unfoldings, ranks, projection."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from lori.lowrank.maths import (Factors, GramAccumulator, MomentAccumulator, choose_rank, eig_desc, energy_curve,
                          select_layers)

T, L, D = 500, 5, 12


@pytest.fixture(scope="module")
def H():
    rng = np.random.default_rng(0)
    # non-zero mean and very different per-layer scales, so centring and scaling matter
    return (rng.standard_normal((T, L, D)) * np.array([1.0, 3.0, 10.0, 0.5, 30.0])[None, :, None]
            + rng.standard_normal((L, D)) * 2.0)


def accumulate(H, center, scaling, chunk=None):
    mom = MomentAccumulator()
    chunk = chunk or len(H)
    for lo in range(0, len(H), chunk):
        mom.update(H[lo : lo + chunk])
    mean, scale = mom.transform(center, scaling)
    gram = GramAccumulator.empty(H.shape[1], H.shape[2])
    for lo in range(0, len(H), chunk):
        gram.update(H[lo : lo + chunk], mean, scale)
    return mom, gram, mean, scale


def unfoldings(X):
    """Exact mode-2 [L, T*d] and mode-3 [d, T*L] unfoldings."""
    return X.transpose(1, 0, 2).reshape(X.shape[1], -1), X.transpose(2, 0, 1).reshape(X.shape[2], -1)


def check_against_svd(gram: GramAccumulator, X: np.ndarray):
    for G, M in ((gram.gram_layer, unfoldings(X)[0]), (gram.gram_hidden, unfoldings(X)[1])):
        vals, vecs = eig_desc(G)
        u, s, _ = np.linalg.svd(M, full_matrices=False)
        np.testing.assert_allclose(vals, s**2, rtol=1e-8)
        for k in range(1, len(s)):
            if s[k - 1] - s[k] > 1e-6 * s[0]:          # compare leading subspaces at spectral gaps
                assert np.max(subspace_angles(vecs[:, :k], u[:, :k])) < 1e-6
        # orthonormal columns
        np.testing.assert_allclose(vecs.T @ vecs, np.eye(len(s)), atol=1e-10)
    assert gram.total_energy == pytest.approx(float((X**2).sum()), rel=1e-12)
    assert gram.gram_layer.trace() == pytest.approx(gram.total_energy, rel=1e-12)
    assert gram.gram_hidden.trace() == pytest.approx(gram.total_energy, rel=1e-12)


def test_grams_match_unfoldings_raw(H):
    mom, gram, mean, scale = accumulate(H, center=False, scaling="none")
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(scale, 1.0)
    assert mom.count == gram.count == T
    check_against_svd(gram, H)


def test_grams_match_unfoldings_centred_layer_rms(H):
    _, gram, mean, scale = accumulate(H, center=True, scaling="layer_rms")
    exp_mean = H.mean(0)
    exp_scale = np.sqrt(((H - exp_mean) ** 2).mean(axis=(0, 2)))
    np.testing.assert_allclose(mean, exp_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scale, exp_scale, rtol=1e-10)
    X = (H - exp_mean) / exp_scale[:, None]
    check_against_svd(gram, X)
    # after layer_rms every layer carries the same energy: T * d each
    np.testing.assert_allclose(np.diag(gram.gram_layer), T * D, rtol=1e-10)


def test_layer_rms_without_centring(H):
    _, gram, mean, scale = accumulate(H, center=False, scaling="layer_rms")
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_allclose(scale, np.sqrt((H**2).mean(axis=(0, 2))), rtol=1e-10)
    check_against_svd(gram, H / scale[:, None])


def test_chunked_equals_single_chunk(H):
    m1, g1, mean1, s1 = accumulate(H, True, "layer_rms")
    m7, g7, mean7, s7 = accumulate(H, True, "layer_rms", chunk=7)
    np.testing.assert_allclose(mean7, mean1, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(s7, s1, rtol=1e-10)
    np.testing.assert_allclose(g7.gram_layer, g1.gram_layer, rtol=1e-10, atol=1e-10 * np.abs(g1.gram_layer).max())
    np.testing.assert_allclose(g7.gram_hidden, g1.gram_hidden, rtol=1e-10, atol=1e-10 * np.abs(g1.gram_hidden).max())
    assert g7.count == g1.count == T
    assert g7.total_energy == pytest.approx(g1.total_energy, rel=1e-10)
    # factors (with the sign convention) agree between chunkings
    for a, b in ((g1.gram_layer, g7.gram_layer), (g1.gram_hidden, g7.gram_hidden)):
        np.testing.assert_allclose(eig_desc(a)[1], eig_desc(b)[1], atol=1e-8)


def test_merge_of_halves_equals_whole(H):
    _, whole, mean, scale = accumulate(H, True, "layer_rms")
    m_a, m_b = MomentAccumulator(), MomentAccumulator()
    m_a.update(H[:200])
    m_b.update(H[200:])
    merged = m_a.merge(m_b)
    assert merged.count == T
    mean_m, scale_m = merged.transform(True, "layer_rms")
    np.testing.assert_allclose(mean_m, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scale_m, scale, rtol=1e-12)
    g_a, g_b = GramAccumulator.empty(L, D), GramAccumulator.empty(L, D)
    g_a.update(H[:200], mean, scale)
    g_b.update(H[200:], mean, scale)
    g = g_a.merge(g_b)
    np.testing.assert_allclose(g.gram_layer, whole.gram_layer, rtol=1e-10)
    np.testing.assert_allclose(g.gram_hidden, whole.gram_hidden, rtol=1e-10, atol=1e-9)
    assert g.count == T and g.total_energy == pytest.approx(whole.total_energy, rel=1e-12)
    # merging with an empty accumulator is the identity
    assert MomentAccumulator().merge(m_a) is m_a and m_a.merge(MomentAccumulator()) is m_a


def test_moment_transform_errors():
    with pytest.raises(ValueError, match="no tokens"):
        MomentAccumulator().transform(True, "none")
    m = MomentAccumulator()
    m.update(np.ones((3, 2, 4)))
    with pytest.raises(ValueError, match="unknown layer_scaling"):
        m.transform(True, "global")
    # a constant (dead) layer after centring does not divide by zero
    mean, scale = m.transform(True, "layer_rms")
    assert np.all(np.isfinite(scale)) and np.all(scale > 0)


def test_choose_rank_recovers_true_ranks():
    rng = np.random.default_rng(1)
    n, rl, rd = 2000, 2, 3
    A = np.linalg.qr(rng.standard_normal((L, rl)))[0]
    B = np.linalg.qr(rng.standard_normal((D, rd)))[0]
    core = rng.standard_normal((n, rl, rd)) * np.array([1.0, 0.7])[None, :, None] * np.array([1.0, 0.8, 0.6])
    Hl = np.einsum("trs,lr,ds->tld", core, A, B) + 1e-3 * rng.standard_normal((n, L, D))
    _, gram, _, _ = accumulate(Hl, False, "none")
    sl, _ = eig_desc(gram.gram_layer)
    sd, ud = eig_desc(gram.gram_hidden)
    assert choose_rank(sl, 0.99) == rl
    assert choose_rank(sd, 0.99) == rd
    assert choose_rank(sd, 1.0) == D
    assert np.max(subspace_angles(ud[:, :rd], B)) < 1e-2


def test_choose_rank_and_energy_curve_exact():
    spec = np.array([6.0, 3.0, 1.0, 0.0])
    np.testing.assert_allclose(energy_curve(spec), [0.6, 0.9, 1.0, 1.0])
    assert choose_rank(spec, 0.6) == 1        # reaching the threshold exactly counts
    assert choose_rank(spec, 0.61) == 2
    assert choose_rank(spec, 0.9) == 2
    assert choose_rank(spec, 0.95) == 3
    assert choose_rank(spec, 1.0) == 3
    assert choose_rank(np.zeros(4), 0.5) == 1
    np.testing.assert_array_equal(energy_curve(np.zeros(3)), np.ones(3))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="energy must be in"):
            choose_rank(spec, bad)


def test_eig_desc_sign_convention_and_order():
    rng = np.random.default_rng(2)
    M = rng.standard_normal((6, 40))
    G = M @ M.T
    vals, vecs = eig_desc(G)
    assert np.all(np.diff(vals) <= 0)
    idx = np.abs(vecs).argmax(0)
    assert np.all(vecs[idx, np.arange(6)] > 0)
    np.testing.assert_allclose(G @ vecs, vecs * vals, atol=1e-9)
    # the same subspace given with flipped eigenvector signs (via a rotated basis) gives identical output
    Q = np.diag([1, -1, 1, -1, -1, 1.0])
    vals2, vecs2 = eig_desc(Q @ G @ Q)
    np.testing.assert_allclose(vals2, vals, rtol=1e-12)
    np.testing.assert_allclose(Q @ vecs2 * np.sign((Q @ vecs2)[idx, np.arange(6)]), vecs, atol=1e-10)
    # tiny negative eigenvalues from rounding are clipped to 0; asymmetric noise symmetrised
    v0, _ = eig_desc(np.array([[1.0, 1.0], [1.0, 1.0]]) + np.array([[0, 1e-15], [0, 0]]))
    assert v0[1] == 0.0 and v0[0] == pytest.approx(2.0)


def test_factors_project_equals_einsum():
    rng = np.random.default_rng(3)
    h = torch.from_numpy(rng.standard_normal((4, 9, L, D)))
    U_l = torch.from_numpy(np.linalg.qr(rng.standard_normal((L, 2)))[0])
    U_d = torch.from_numpy(np.linalg.qr(rng.standard_normal((D, 3)))[0])
    mean = torch.from_numpy(rng.standard_normal((L, D)))
    scale = torch.from_numpy(rng.uniform(0.5, 4.0, L))
    f = Factors(U_l, U_d, mean, scale, layers=[1, 2, 3, 4, 5])
    assert f.ranks == (2, 3)
    z = f.project(h)
    assert z.shape == (4, 9, 2, 3)
    hn = (h.numpy() - mean.numpy()) / scale.numpy()[:, None]
    exp = np.einsum("btld,lr,ds->btrs", hn, U_l.numpy(), U_d.numpy())
    np.testing.assert_allclose(z.numpy(), exp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f.normalize(h).numpy(), hn, rtol=1e-12)
    f32 = f.to("cpu")
    assert f32.U_layer.dtype == torch.float32 and f32.layers == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(f32.project(h.float()).numpy(), exp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec, n, expected", [
    ("all", 4, [1, 2, 3, 4]),
    ("every_k:2", 4, [2, 4]),
    ("every_k:2", 5, [2, 4, 5]),
    ("every_k:3", 7, [3, 6, 7]),
    ("every_k:10", 4, [4]),
    ("every_k:1", 3, [1, 2, 3]),
    ([3, 0, 1], 4, [0, 1, 3]),
    ([4], 4, [4]),
])
def test_select_layers(spec, n, expected):
    assert select_layers(spec, n) == expected


@pytest.mark.parametrize("spec, n, fragment", [
    ([5], 4, "out of range 0..4"),
    ([-1, 2], 4, "out of range"),
    ("some", 4, "unknown layer spec"),
    ("every_k:x", 4, "invalid literal"),
    ("every_k:0", 4, None),                 # the schema rejects it; here any ValueError will do
])
def test_select_layers_bad(spec, n, fragment):
    with pytest.raises(ValueError, match=fragment):
        select_layers(spec, n)


def test_example_diagnostics_batches_equal_one_by_one():
    from lori.lowrank.maths import ExampleDiagnostics, effective_rank

    rng = np.random.default_rng(7)
    lengths = [3, 0, 0, 7, 1, 12, 0, 5]
    examples = [rng.standard_normal((n, L, D)).astype(np.float16) for n in lengths]
    mean, scale = rng.standard_normal((L, D)), rng.uniform(0.5, 2.0, L)
    U_l = np.linalg.qr(rng.standard_normal((L, 2)))[0]
    U_d = np.linalg.qr(rng.standard_normal((D, 3)))[0]
    whole = ExampleDiagnostics.of_examples(4, examples, mean, scale, U_l, U_d)
    tiny = ExampleDiagnostics.of_examples(4, examples, mean, scale, U_l, U_d, batch_bytes=1)   # one per batch
    for d in (whole, tiny):
        assert d.first == 4 and list(d.cot_length) == lengths
        for i, h in enumerate(examples):
            x = (h.astype(np.float64) - mean) / scale[:, None]
            core = np.einsum("tld,lr,ds->trs", x, U_l, U_d)
            assert d.effective_rank[i] == pytest.approx(effective_rank(x), rel=1e-9, abs=1e-12)
            assert d.energy_total[i] == pytest.approx((x**2).sum(), rel=1e-12, abs=1e-12)
            assert d.energy_core[i] == pytest.approx((core**2).sum(), rel=1e-10, abs=1e-12)
    assert np.isnan(whole.energy_captured[1]) and 0 < whole.energy_captured[0] < 1
    # adjacent ranges merge; gaps are refused
    a = ExampleDiagnostics.of_examples(0, examples[:3], mean, scale, U_l, U_d)
    b = ExampleDiagnostics.of_examples(3, examples[3:], mean, scale, U_l, U_d)
    np.testing.assert_allclose(a.merge(b).effective_rank, ExampleDiagnostics.of_examples(
        0, examples, mean, scale, U_l, U_d).effective_rank, rtol=1e-12)
    with pytest.raises(ValueError, match="not adjacent"):
        b.merge(a)
