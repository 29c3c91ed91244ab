"""The factorize stage: exact subspaces, adaptive ranks, sharding, HOOI, diagnostics, clear errors, DAG."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
import zarr
from scipy.linalg import subspace_angles

from lori import factorize
from lori.config import parse_stage_args
from lori.artifacts.store import ArtifactError
from lori.factorize import FactorizeConfig
from lori.lowrank.maths import effective_rank
from lori.lowrank.passes import plan, shard_ranges
from tests.runs import MICRO, planned_jobs, snakemake, write_hidden

L, D = 5, 12


def random_offsets(rng, examples: int, max_len: int = 25) -> np.ndarray:
    lengths = rng.integers(0, max_len, examples)
    lengths[3] = 0                                              # an example without CoT tokens
    return np.concatenate([[0], np.cumsum(lengths)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Random states with a non-zero mean and very different layer scales."""
    rng = np.random.default_rng(0)
    offsets = random_offsets(rng, 50)
    H = (rng.standard_normal((offsets[-1], L, D)) * np.array([1.0, 3.0, 10.0, 0.5, 30.0])[None, :, None]
         + rng.standard_normal((L, D)) * 2.0)
    path = write_hidden(tmp_path_factory.mktemp("h") / "calib.zarr", H, offsets)
    return path, H.astype(np.float16).astype(np.float64), offsets      # what the store holds, exactly


def run_cli(hidden: str, out, *flags: str) -> zarr.Group:
    factorize.main(["--hidden", hidden, "--out", str(out), *flags])
    return zarr.open_group(str(out), mode="r")


def normalised(H: np.ndarray, center: bool, scaling: str) -> np.ndarray:
    X = H - H.mean(0) if center else H.copy()
    if scaling == "layer_rms":
        X /= np.sqrt((X**2).mean(axis=(0, 2)))[:, None]
    return X


@pytest.mark.parametrize("center, scaling", [(False, "none"), (True, "none"), (True, "layer_rms"), (False, "layer_rms")])
def test_subspaces_equal_exact_unfolding_svd(data, tmp_path, center, scaling):
    hidden, H, _ = data
    g = run_cli(hidden, tmp_path / "f.zarr", "--rank-layer", "2", "--rank-hidden", "5", "--chunk-tokens", "10",
                "--center", str(center), "--layer-scaling", scaling)
    X = normalised(H, center, scaling)
    np.testing.assert_allclose(g["mean"][...], H.mean(0) if center else 0.0, rtol=1e-12, atol=1e-12)
    for name, unfold, r in [("layer", X.transpose(1, 0, 2).reshape(L, -1), 2), ("hidden", X.reshape(-1, D), 5)]:
        u, s, _ = np.linalg.svd(unfold if name == "layer" else unfold.T, full_matrices=False)
        U = g[f"U_{name}"][...]
        assert U.shape == (u.shape[0], r)
        np.testing.assert_allclose(U.T @ U, np.eye(r), atol=1e-12)
        assert np.max(subspace_angles(U, u[:, :r])) < 1e-6
        np.testing.assert_allclose(g[f"spectrum_{name}"][...], s**2, rtol=1e-9, atol=1e-9 * s[0] ** 2)
    # the joint energy is that of the exact projection
    core = np.einsum("tld,lr,ds->trs", X, g["U_layer"][...], g["U_hidden"][...])
    assert g.attrs["energy_joint"] == pytest.approx((core**2).sum() / (X**2).sum(), rel=1e-10)
    assert g.attrs["centered"] is center and g.attrs["tokens"] == len(H)


def test_energy_recovers_true_ranks(tmp_path):
    rng = np.random.default_rng(1)
    offsets = random_offsets(rng, 80)
    rl, rd = 2, 3
    A, B = (np.linalg.qr(rng.standard_normal((n, r)))[0] for n, r in ((L, rl), (D, rd)))
    core = rng.standard_normal((offsets[-1], rl, rd)) * np.array([1.0, 0.7])[None, :, None] * np.array([1.0, 0.8, 0.6])
    H = 10 * np.einsum("trs,lr,ds->tld", core, A, B) + 0.01 * rng.standard_normal((offsets[-1], L, D))
    hidden = write_hidden(tmp_path / "h.zarr", H, offsets)
    # --energy alone: both ranks adaptive
    g = run_cli(hidden, tmp_path / "f.zarr", "--energy", "0.99", "--center", "false", "--layer-scaling", "none")
    assert (g.attrs["rank_layer"], g.attrs["rank_hidden"]) == (rl, rd)
    assert g.attrs["energy_layer"] >= 0.99 and g.attrs["energy_hidden"] >= 0.99 and g.attrs["energy_threshold"] == 0.99
    assert np.max(subspace_angles(g["U_hidden"][...], B)) < 1e-2
    # an explicit rank wins over the energy threshold
    g = run_cli(hidden, tmp_path / "f2.zarr", "--energy", "0.99", "--rank-hidden", "5")
    assert (g.attrs["rank_layer"], g.attrs["rank_hidden"]) == (rl, 5)


def sharded_cli(hidden: str, out, flags: list[str], shards: int, work) -> zarr.Group:
    """The Snakemake scatter/gather, by hand: every pass's partials through files, then a gather."""
    flags = [*flags, "--shards", str(shards)]
    steps = parse_stage_args(FactorizeConfig, flags, "", [])[0].passes
    state = []
    for i, step in enumerate(steps):
        parts = [str(work / f"{step}.part{s}.npz") for s in range(shards)]
        for s, part in enumerate(parts):
            factorize.main(["partial", "--hidden", hidden, "--step", step, "--shard", str(s), *state, "--out", part, *flags])
        dest = str(out) if i == len(steps) - 1 else str(work / f"{step}.state.npz")
        factorize.main(["gather", "--hidden", hidden, "--step", step, "--parts", ",".join(reversed(parts)), *state,
                        "--out", dest, *flags])
        state = ["--state", dest]
    return zarr.open_group(str(out), mode="r")


def assert_same_store(a: zarr.Group, b: zarr.Group, tol: float = 1e-10) -> None:
    names = sorted(n for n, _ in a.arrays())
    assert names == sorted(n for n, _ in b.arrays())
    for n in names:
        x, y = a[n][...], b[n][...]
        if x.dtype.kind in "fc":
            np.testing.assert_allclose(x, y, rtol=tol, atol=tol * max(1.0, np.nanmax(np.abs(x))), err_msg=n)
        else:
            np.testing.assert_array_equal(x, y, err_msg=n)
    skip = {"config_hash", "shards", "hidden_store"}
    for k, v in a.attrs.items():
        if k not in skip:
            assert b.attrs[k] == pytest.approx(v, rel=tol, abs=tol) if isinstance(v, (float, list)) else b.attrs[k] == v, k


@pytest.mark.parametrize("flags", [["--center", "true", "--layer-scaling", "layer_rms", "--method", "hosvd"],
                                   ["--center", "false", "--layer-scaling", "none", "--method", "hooi", "--hooi-iters", "3"]])
def test_sharded_equals_unsharded(data, tmp_path, flags):
    hidden = data[0]
    flags = [*flags, "--rank-layer", "2", "--rank-hidden", "4", "--chunk-tokens", "9"]
    whole = run_cli(hidden, tmp_path / "whole.zarr", *flags)
    (tmp_path / "work").mkdir()
    assert_same_store(whole, sharded_cli(hidden, tmp_path / "sharded.zarr", flags, 3, tmp_path / "work"))
    # more shards than examples: empty shards add nothing
    assert_same_store(whole, run_cli(hidden, tmp_path / "many.zarr", *flags, "--shards", "64"))


def test_gather_refuses_missing_stale_or_foreign_partials(data, tmp_path):
    hidden = data[0]
    common = ["--hidden", hidden, "--shards", "2", "--center", "false", "--layer-scaling", "none", "--rank-hidden", "4"]
    for s in range(2):
        factorize.main(["partial", *common, "--step", "grams", "--shard", str(s), "--out", str(tmp_path / f"g{s}.npz")])
    with pytest.raises(ArtifactError, match=r"missing \[1\]"):
        factorize.main(["gather", *common, "--step", "grams", "--parts", str(tmp_path / "g0.npz"), "--out", str(tmp_path / "s.npz")])
    with pytest.raises(ArtifactError, match="expected pass 'grams', 2 shards, config"):
        factorize.main(["gather", *common, "--rank-hidden", "3", "--step", "grams", "--parts",
                        f"{tmp_path / 'g0.npz'},{tmp_path / 'g1.npz'}", "--out", str(tmp_path / "s.npz")])
    factorize.main(["gather", *common, "--step", "grams", "--parts", f"{tmp_path / 'g0.npz'},{tmp_path / 'g1.npz'}",
                    "--out", str(tmp_path / "s.npz")])
    factorize.main(["partial", *common, "--step", "diagnostics", "--shard", "0", "--state", str(tmp_path / "s.npz"),
                    "--out", str(tmp_path / "d0.npz")])
    # partials computed from one state, gathered against another (e.g. the dump was redone): stale
    rng = np.random.default_rng(9)
    other = write_hidden(tmp_path / "other.zarr", rng.standard_normal((30, L, D)), [0, 10, 30])
    other_common = [other if c == hidden else c for c in common]
    for s in range(2):
        factorize.main(["partial", *other_common, "--step", "grams", "--shard", str(s), "--out", str(tmp_path / f"o{s}.npz")])
    factorize.main(["gather", *other_common, "--step", "grams", "--parts", f"{tmp_path / 'o0.npz'},{tmp_path / 'o1.npz'}",
                    "--out", str(tmp_path / "s_other.npz")])
    with pytest.raises(ArtifactError, match="stale"):
        factorize.main(["gather", *common, "--step", "diagnostics", "--state", str(tmp_path / "s_other.npz"),
                        "--parts", str(tmp_path / "d0.npz"), "--out", str(tmp_path / "f.zarr")])
    with pytest.raises(Exception, match="needs --state"):
        factorize.main(["partial", *common, "--step", "diagnostics", "--shard", "0", "--out", str(tmp_path / "x.npz")])
    with pytest.raises(Exception, match="not in this config's plan"):
        factorize.main(["partial", *common, "--step", "hooi1", "--shard", "0", "--out", str(tmp_path / "x.npz")])
    assert not (tmp_path / "f.zarr").exists() and not (tmp_path / "x.npz").exists()


def test_hooi_error_decreases_and_matches_measured_energy(data, tmp_path):
    hidden = data[0]
    flags = ["--rank-layer", "2", "--rank-hidden", "3"]
    hosvd = run_cli(hidden, tmp_path / "hosvd.zarr", *flags)
    hooi = run_cli(hidden, tmp_path / "hooi.zarr", *flags, "--method", "hooi", "--hooi-iters", "5")
    errors = hooi.attrs["reconstruction_errors"]
    assert len(errors) == 6 and errors[0] == pytest.approx(hosvd.attrs["reconstruction_error"], rel=1e-10)
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])) and errors[-1] < errors[0]
    # the error tracked through the Grams equals the one measured example by example
    assert errors[-1] == pytest.approx(np.sqrt(1 - hooi.attrs["energy_joint"]), rel=1e-9)
    U = hooi["U_hidden"][...]
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-12)


def test_per_example_diagnostics(data, tmp_path):
    hidden, H, offsets = data
    g = run_cli(hidden, tmp_path / "f.zarr", "--rank-layer", "2", "--rank-hidden", "4", "--chunk-tokens", "6")
    X = normalised(H, True, "layer_rms")
    np.testing.assert_array_equal(g["cot_length"][...], np.diff(offsets))
    np.testing.assert_array_equal(g["example_id"][:2], ["ex0", "ex1"])
    U_l, U_d = g["U_layer"][...], g["U_hidden"][...]
    for i in range(len(offsets) - 1):
        x = X[offsets[i] : offsets[i + 1]]
        if len(x) == 0:
            assert g["effective_rank"][i] == 0 and np.isnan(g["energy_captured"][i])
            continue
        s = np.linalg.svd(x.reshape(len(x), -1), compute_uv=False)
        p = s / s.sum()
        assert g["effective_rank"][i] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-8)
        core = np.einsum("tld,lr,ds->trs", x, U_l, U_d)
        assert g["energy_captured"][i] == pytest.approx((core**2).sum() / (x**2).sum(), rel=1e-9)
    for name in ("effective_rank", "cot_length", "energy_captured", "example_id"):
        assert g[name].attrs["_ARRAY_DIMENSIONS"] == ["example"]


def test_effective_rank_limits():
    rng = np.random.default_rng(5)
    rank_one = np.outer(rng.standard_normal(9), rng.standard_normal(L * D)).reshape(9, L, D)
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-9)
    q = np.linalg.qr(rng.standard_normal((L * D, 6)))[0].T.reshape(6, L, D)   # 6 orthonormal tokens
    assert effective_rank(q) == pytest.approx(6.0, rel=1e-10)
    assert effective_rank(np.zeros((0, L, D))) == 0.0 and effective_rank(np.zeros((4, L, D))) == 0.0


def test_shard_ranges_cover_whole_examples():
    offsets = np.array([0, 5, 5, 12, 30, 31, 40])
    shards = shard_ranges(offsets, 3)
    assert [s.examples for s in shards] == [(0, 3), (3, 4), (4, 6)]
    assert [s.tokens for s in shards] == [(0, 12), (12, 30), (30, 40)]
    many = shard_ranges(offsets, 10)
    assert many[0].examples[0] == 0 and many[-1].examples[1] == 6
    assert all(a.examples[1] == b.examples[0] for a, b in zip(many, many[1:]))


# ---------------------------------------------------------------- clear errors
def test_missing_store_and_arrays_are_named(data, tmp_path):
    with pytest.raises(ArtifactError, match="hidden store is missing"):
        factorize.main(["--hidden", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "f.zarr")])
    for name in ("states", "offsets"):
        broken = tmp_path / f"no_{name}.zarr"
        shutil.copytree(data[0], broken)
        shutil.rmtree(broken / name)
        with pytest.raises(ArtifactError, match=f"no readable array '{name}'"):
            factorize.main(["--hidden", str(broken), "--out", str(tmp_path / "f.zarr")])
    assert not (tmp_path / "f.zarr").exists()


def test_corrupt_arrays_are_named(data, tmp_path):
    broken = tmp_path / "corrupt.zarr"
    shutil.copytree(data[0], broken)
    chunk = next(p for p in (broken / "states").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"garbage")                               # an uncompressed chunk of the wrong size
    with pytest.raises(ArtifactError, match="array 'states' unreadable at tokens"):
        factorize.main(["--hidden", str(broken), "--out", str(tmp_path / "f.zarr")])
    bad_offsets = tmp_path / "offsets.zarr"
    shutil.copytree(data[0], bad_offsets)
    g = zarr.open_group(str(bad_offsets), mode="r+")
    g["offsets"][-1] = 3                                        # does not end at the number of tokens
    with pytest.raises(ArtifactError, match="array 'offsets' must be non-decreasing"):
        factorize.main(["--hidden", str(bad_offsets), "--out", str(tmp_path / "f.zarr")])
    (bad_offsets / "offsets" / "zarr.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="'offsets'"):
        factorize.main(["--hidden", str(bad_offsets), "--out", str(tmp_path / "f.zarr")])
    assert not (tmp_path / "f.zarr").exists()


# ---------------------------------------------------------------- the DAG
def test_dry_run_with_shards_plans_scatter_gather(tmp_path):
    cfg = yaml.safe_load(MICRO.read_text())
    cfg["factorize"].update(shards=3, method="hooi", hooi_iters=2)
    path = tmp_path / "sharded.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "-n", configfile=path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = planned_jobs(res)
    f = cfg["factorize"]
    steps = plan(f["method"], f["hooi_iters"], f.get("center", True), f.get("layer_scaling", "layer_rms"))
    assert steps == ["moments", "grams", "hooi1", "hooi2", "diagnostics"] == FactorizeConfig(**f).passes
    assert jobs["factorize_partial"] == 3 * len(steps) and jobs["factorize_gather"] == len(steps) - 1
    assert jobs["factorize"] == 1 and jobs["targets"] == 1


def test_plan_runs_moments_only_when_centring_or_scaling():
    assert plan("hosvd", 4, False, "none") == ["grams", "diagnostics"]
    assert plan("hosvd", 4, True, "none") == plan("hosvd", 4, False, "layer_rms") == ["moments", "grams", "diagnostics"]
    assert plan("hooi", 2, False, "none") == ["grams", "hooi1", "hooi2", "diagnostics"]
    assert FactorizeConfig(center=False, layer_scaling="none", method="hooi", hooi_iters=2).passes == \
        plan("hooi", 2, False, "none")
