"""The store contracts (lori.artifacts): docs/artifacts.md lists what the code writes, every store
round-trips through its write and read functions, and a half-written or malformed store is refused."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from lori.artifacts import factor_state, factors, hidden, targets
from lori.artifacts.store import ArtifactError, zarr_put
from lori.lowrank.maths import ExampleDiagnostics, Factors, GramAccumulator
from lori.lowrank.passes import FactorState

DOC = Path(__file__).resolve().parents[1] / "docs" / "artifacts.md"
CONTRACTS = {"hidden/calib.zarr": hidden, "lowrank/factors.zarr": factors, "targets/train.zarr": targets}


# ---------------------------------------------------------------- docs/artifacts.md agrees with the code
def doc_section(text: str, store: str) -> str:
    """The ``### `store` (stage)`` section of the doc, up to the next heading."""
    m = re.search(rf"^### `{re.escape(store)}` \((\w+)\)\n(.*?)(?=^##)", text, re.S | re.M)
    assert m, f"docs/artifacts.md has no section for {store}"
    return m.group(0)


def doc_arrays(section: str) -> dict[str, tuple[tuple[str, ...], str]]:
    """``name -> (dims, dtype)`` from the section's table rows ``| `name` | `d1, d2` | dtype | what |``."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = (tuple(d.strip() for d in cells[1].strip("`").split(",")), cells[2])
    return rows


def doc_attrs(section: str) -> set[str]:
    """The attr names of the section's ``Attrs: `a`, `b` (note), ...`` sentence."""
    m = re.search(r"^Attrs: (.*?)\.(\s|$)", section, re.S | re.M)
    assert m, "no 'Attrs:' sentence"
    return set(re.findall(r"`(\w+)`", m.group(1)))


def mismatches(text: str, store: str, contract) -> list[str]:
    """Where the doc's section for ``store`` and the contract module disagree."""
    section = doc_section(text, store)
    problems = []
    if f"({contract.STAGE})" not in section.splitlines()[0]:
        problems.append(f"{store}: heading does not name stage {contract.STAGE}")
    documented = doc_arrays(section)
    for name, spec in contract.ARRAYS.items():
        if name not in documented:
            problems.append(f"{store}: array {name} is not documented")
        elif documented[name] != (spec.dims, spec.dtype):
            problems.append(f"{store}: array {name} documented as {documented[name]}, code has {(spec.dims, spec.dtype)}")
    problems += [f"{store}: documented array {n} is not in the code" for n in documented if n not in contract.ARRAYS]
    attrs = doc_attrs(section)
    problems += [f"{store}: attr {a} is not documented" for a in contract.ATTRS if a not in attrs]
    problems += [f"{store}: documented attr {a} is not in the code" for a in attrs if a not in contract.ATTRS]
    return problems


def test_docs_list_every_array_dims_dtype_and_attr():
    text = DOC.read_text(encoding="utf-8")
    assert [p for store, c in CONTRACTS.items() for p in mismatches(text, store, c)] == []
    hidden_section = doc_section(text, "hidden/calib.zarr")
    assert all(f"`{a}`" in hidden_section for a in hidden.SHARD_ATTRS)


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace("| `anchors_core` | `example, anchor, rank_layer, rank_hidden` | float32 | anchors in the core |\n", ""),
     "array anchors_core is not documented"),
    (lambda t: t.replace("| `states` | `token, layer, hidden` |", "| `states` | `token, hidden, layer` |"),
     "array states documented as"),
    (lambda t: t.replace("| `cot_length` | `example` | int64 |", "| `cot_length` | `example` | float64 |"),
     "array cot_length documented as"),
    (lambda t: t.replace("| `example_id` | `example` | string | joins back", "| `example_ids` | `example` | string | joins back"),
     "documented array example_ids is not in the code"),
    (lambda t: t.replace("`hidden_config_hash`", "`hidden_hash`"), "attr hidden_config_hash is not documented"),
])
def test_doc_check_catches_a_drift(edit, fragment):
    text = edit(DOC.read_text(encoding="utf-8"))
    problems = [p for store, c in CONTRACTS.items() for p in mismatches(text, store, c)]
    assert any(fragment in p for p in problems), problems


# ---------------------------------------------------------------- small stores
L, D, IDS = 3, 8, ["a", "b", "c", "d"]
OFFSETS = np.array([0, 5, 5, 12, 20], dtype=np.int64)          # example b has no CoT tokens


def states_of(rng, tokens: int) -> np.ndarray:
    return rng.standard_normal((tokens, L, D)).astype(np.float32)


def write_hidden(path: Path, states: np.ndarray, anchors: np.ndarray, offsets=OFFSETS, ids=IDS, batch: int = 2,
                 attrs: dict | None = None) -> Path:
    with hidden.create(path, offsets, ids, [1, 2, 3], D, {"stage": "dump_hidden", **(attrs or {})}) as writer:
        for first in range(0, len(ids), batch):
            last = min(len(ids), first + batch)
            writer.write(first, states[offsets[first]:offsets[last]], anchors[first:last])
    return path


def files(store: Path) -> dict[str, bytes]:
    return {str(f.relative_to(store)): f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file()}


def truncate_chunks(store: Path, name: str) -> None:
    for f in (store / name).rglob("*"):
        if f.is_file() and f.name != "zarr.json":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def damaged(src: Path, tmp: Path, fn) -> Path:
    dst = tmp / f"bad-{len(list(tmp.iterdir()))}.zarr"
    shutil.copytree(src, dst)
    fn(dst)
    return dst


def rewrite(store: Path, name: str, data: np.ndarray, dims: list[str] | None = None) -> None:
    g = zarr.open_group(str(store), mode="a")
    dims = dims or g[name].attrs["_ARRAY_DIMENSIONS"]
    del g[name]
    zarr_put(g, name, data, dims)


# ---------------------------------------------------------------- hidden
def test_hidden_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    states, anchors = states_of(rng, 20), rng.standard_normal((4, 1, L, D)).astype(np.float32)
    store = hidden.open_hidden(write_hidden(tmp_path / "h.zarr", states, anchors))
    np.testing.assert_array_equal(store.states[...], states.astype(np.float16))
    np.testing.assert_array_equal(store.offsets, OFFSETS)
    np.testing.assert_array_equal(store.group["anchors"][...], anchors.astype(np.float16))
    assert list(store.example_ids()) == IDS
    assert list(store.attrs) == list(hidden.ATTRS[:1]) + list(hidden.INDEX_ATTRS)
    assert store.attrs["layers"] == [1, 2, 3] and store.attrs["tokens"] == 20 and store.attrs["examples"] == 4
    for name, spec in hidden.ARRAYS.items():
        arr = store.group[name]
        assert arr.attrs["_ARRAY_DIMENSIONS"] == list(spec.dims), name
        assert (arr.dtype.kind in "TUO") if spec.dtype == "string" else arr.dtype == spec.dtype, name


def test_hidden_writer_refuses_a_batch_of_the_wrong_length(tmp_path):
    with pytest.raises(ValueError, match="own 5 tokens, got states for 4"):
        with hidden.create(tmp_path / "h.zarr", OFFSETS, IDS, [1, 2, 3], D, {}) as writer:
            writer.write(0, np.zeros((4, L, D)), np.zeros((1, 1, L, D)))
    assert not (tmp_path / "h.zarr").exists()          # nothing half-written under the real name


def test_concatenated_parts_equal_the_whole_store_bitwise(tmp_path):
    rng = np.random.default_rng(1)
    states, anchors = states_of(rng, 20), rng.standard_normal((4, 1, L, D)).astype(np.float32)
    whole = write_hidden(tmp_path / "whole.zarr", states, anchors, attrs={"model": "m"})
    cut = 3                                             # parts: examples 0..2, 3
    first = write_hidden(tmp_path / "p0.zarr", states[: OFFSETS[cut]], anchors[:cut], OFFSETS[: cut + 1], IDS[:cut],
                         attrs={"model": "m", "shard": 0})
    second = write_hidden(tmp_path / "p1.zarr", states[OFFSETS[cut]:], anchors[cut:], OFFSETS[cut:] - OFFSETS[cut],
                          IDS[cut:], attrs={"model": "m", "shard": 1})
    info = hidden.concatenate([first, second], tmp_path / "gathered.zarr", {"stage": "dump_hidden", "model": "m"}, IDS)
    assert info == {"examples": 4, "tokens": 20, "mean_cot_tokens": 5.0}
    assert files(tmp_path / "gathered.zarr") == files(whole)
    assert hidden.read_shard_attrs(second)["shard"] == 1
    with pytest.raises(ArtifactError, match="not a dump_hidden shard store"):
        hidden.read_shard_attrs(whole)
    with pytest.raises(ArtifactError, match="not the 4 calibration records in order"):
        hidden.concatenate([second, first], tmp_path / "x.zarr", {}, IDS)
    assert not (tmp_path / "x.zarr").exists()


def test_open_hidden_refuses_malformed_stores(tmp_path):
    rng = np.random.default_rng(2)
    good = write_hidden(tmp_path / "good.zarr", states_of(rng, 20), np.zeros((4, 1, L, D)))
    work = tmp_path / "work"
    work.mkdir()
    cases = [
        (lambda s: shutil.rmtree(s / "states"), "no readable array 'states'"),
        (lambda s: truncate_chunks(s, "offsets"), "array 'offsets' is unreadable"),
        (lambda s: (s / "zarr.json").write_text("{not json"), "not a readable Zarr group"),
        (lambda s: rewrite(s, "states", np.zeros((20, L, D), np.int32)), "must hold floats"),
        (lambda s: rewrite(s, "states", np.zeros((20, L * D), np.float16), ["token", "flat"]), r"must be \[token, layer, hidden\]"),
        (lambda s: rewrite(s, "offsets", OFFSETS + 1), "array 'offsets' must be non-decreasing"),
    ]
    for fn, fragment in cases:
        with pytest.raises(ArtifactError, match=fragment):
            hidden.open_hidden(damaged(good, work, fn))
    with pytest.raises(ArtifactError, match="hidden store is missing"):
        hidden.open_hidden(tmp_path / "none.zarr")


# ---------------------------------------------------------------- factors
def factor_arrays(rng, ranks=(2, 3), examples: int = 4) -> dict[str, np.ndarray]:
    return {"U_layer": np.linalg.qr(rng.standard_normal((L, ranks[0])))[0],
            "U_hidden": np.linalg.qr(rng.standard_normal((D, ranks[1])))[0],
            "spectrum_layer": np.sort(rng.uniform(size=L))[::-1], "spectrum_hidden": np.sort(rng.uniform(size=D))[::-1],
            "mean": rng.standard_normal((L, D)), "scale": rng.uniform(0.5, 2, L),
            "effective_rank": rng.uniform(1, 3, examples), "cot_length": np.arange(examples, dtype=np.int64),
            "energy_captured": rng.uniform(size=examples), "example_id": np.array(IDS[:examples], dtype=object)}


def factor_attrs(**over) -> dict:
    attrs = {name: i for i, name in enumerate(factors.ATTRS[2:])}
    return {**attrs, "layers": [1, 2, 3], "config_hash": "f" * 16, **over}


def test_factors_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    arrays = factor_arrays(rng)
    factors.write_factors(tmp_path / "f.zarr", arrays, factor_attrs())
    g = zarr.open_group(str(tmp_path / "f.zarr"), mode="r")
    assert list(g.attrs) == list(factors.ATTRS) and g.attrs["stage"] == factors.STAGE
    for name, spec in factors.ARRAYS.items():
        assert g[name].attrs["_ARRAY_DIMENSIONS"] == list(spec.dims), name
        if spec.dtype != "string":
            assert g[name].dtype == spec.dtype, name
            want = arrays[name] if name in arrays else factor_attrs()["layers"]    # the layer coordinate
            np.testing.assert_array_equal(g[name][...], want, err_msg=name)
    assert g["cot_length"].attrs["description"] == factors.ARRAYS["cot_length"].description
    numpy_arrays, attrs = factors.read_factors(tmp_path / "f.zarr")
    assert sorted(numpy_arrays) == sorted(factors.PROJECTION) and attrs["config_hash"] == "f" * 16
    loaded, _ = factors.load_factors(tmp_path / "f.zarr")
    assert loaded.ranks == (2, 3) and loaded.layers == [1, 2, 3] and str(loaded.mean.dtype) == "torch.float32"
    np.testing.assert_allclose(loaded.U_hidden.numpy(), arrays["U_hidden"], rtol=1e-6)
    factors.check_factors_fit(loaded, "f.zarr", SimpleNamespace(hidden_size=D, num_hidden_layers=3), "teacher")
    with pytest.raises(ArtifactError, match="hidden size 8, but teacher has hidden size 16"):
        factors.check_factors_fit(loaded, "f.zarr", SimpleNamespace(hidden_size=16, num_hidden_layers=3), "teacher")
    with pytest.raises(ArtifactError, match=r"factor layers \[1, 2, 3\] .* do not fit teacher \(2 layers"):
        factors.check_factors_fit(loaded, "f.zarr", SimpleNamespace(hidden_size=D, num_hidden_layers=2), "teacher")


def test_write_factors_takes_exactly_the_contract(tmp_path):
    arrays = factor_arrays(np.random.default_rng(4))
    with pytest.raises(ValueError, match="do not match the contract"):
        factors.write_factors(tmp_path / "f.zarr", arrays, {k: v for k, v in factor_attrs().items() if k != "tokens"})
    with pytest.raises(ValueError, match="do not match the contract"):
        factors.write_factors(tmp_path / "f.zarr", {k: v for k, v in arrays.items() if k != "scale"}, factor_attrs())
    assert not (tmp_path / "f.zarr").exists()
    del arrays["example_id"]                             # optional: a dump without ids
    factors.write_factors(tmp_path / "f.zarr", arrays, factor_attrs())
    assert "example_id" not in zarr.open_group(str(tmp_path / "f.zarr"), mode="r")


def test_load_factors_refuses_malformed_stores(tmp_path):
    good = tmp_path / "good.zarr"
    factors.write_factors(good, factor_arrays(np.random.default_rng(5)), factor_attrs())
    work = tmp_path / "work"
    work.mkdir()
    cases = [
        (lambda s: shutil.rmtree(s / "U_hidden"), "no readable array 'U_hidden'"),
        (lambda s: truncate_chunks(s, "mean"), "array 'mean' is unreadable"),
        (lambda s: rewrite(s, "U_hidden", np.eye(D + 1, 3)), "inconsistent shapes"),
        (lambda s: rewrite(s, "scale", np.ones(L + 1)), "inconsistent shapes"),
        (lambda s: rewrite(s, "mean", np.zeros(L), ["layer"]), "must be float"),
    ]
    for fn, fragment in cases:
        with pytest.raises(ArtifactError, match=fragment):
            factors.load_factors(damaged(good, work, fn))


# ---------------------------------------------------------------- targets
RANKS = (2, 3)


def write_targets(path: Path, rng, attrs: dict | None = None) -> dict[str, np.ndarray]:
    data = {"core": rng.standard_normal((20, *RANKS)).astype(np.float32),
            "anchors_core": rng.standard_normal((4, 1, *RANKS)).astype(np.float32),
            "anchors": rng.standard_normal((4, 1, L, D)).astype(np.float32)}
    base = {"stage": "targets", "factors_config_hash": "f" * 16}
    with targets.create(path, OFFSETS, IDS, [1, 2, 3], D, RANKS, {**base, **(attrs or {})}) as writer:
        for first in (0, 3):
            last = 3 if first == 0 else 4
            writer.write(first, data["core"][OFFSETS[first]:OFFSETS[last]], data["anchors_core"][first:last],
                         data["anchors"][first:last])
    return data


def fake_factors(ranks=RANKS, layers=(1, 2, 3)) -> Factors:
    return Factors(np.zeros((L, ranks[0])), np.zeros((D, ranks[1])), np.zeros((L, D)), np.ones(L), list(layers))


def test_targets_round_trip_and_factor_checks(tmp_path):
    data = write_targets(tmp_path / "t.zarr", np.random.default_rng(6))
    t = targets.read_targets(tmp_path / "t.zarr", IDS)
    np.testing.assert_array_equal(t.core, data["core"])
    np.testing.assert_array_equal(t.anchors_core, data["anchors_core"])
    np.testing.assert_array_equal(t.anchors, data["anchors"].astype(np.float16))
    np.testing.assert_array_equal(t.offsets, OFFSETS)
    assert t.example_ids == IDS and t.attrs["layers"] == [1, 2, 3] and t.attrs["anchor_positions"] == ["answer_start"]
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    for name, spec in targets.ARRAYS.items():
        assert g[name].attrs["_ARRAY_DIMENSIONS"] == list(spec.dims), name
        assert (g[name].dtype.kind in "TUO") if spec.dtype == "string" else g[name].dtype == spec.dtype, name
    fattrs = {"config_hash": "f" * 16}
    targets.check_targets_match_factors(t, "t.zarr", fake_factors(), fattrs, "f.zarr")
    for factors_, attrs, fragment in [(fake_factors(), {"config_hash": "0" * 16}, "config hash"),
                                      (fake_factors(ranks=(1, 3)), fattrs, r"has ranks \(2, 3\), but f.zarr has ranks \(1, 3\)"),
                                      (fake_factors(layers=(1, 2, 4)), fattrs, r"factorizes layers \[1, 2, 4\]")]:
        with pytest.raises(ArtifactError, match=fragment):
            targets.check_targets_match_factors(t, "t.zarr", factors_, attrs, "f.zarr")


def test_read_targets_refuses_malformed_stores(tmp_path):
    good = tmp_path / "good.zarr"
    write_targets(good, np.random.default_rng(7))
    with pytest.raises(ArtifactError, match="example ids do not match the training records"):
        targets.read_targets(good, IDS[::-1])
    work = tmp_path / "work"
    work.mkdir()
    cases = [
        (lambda s: truncate_chunks(s, "core"), "array 'core' is unreadable"),
        (lambda s: shutil.rmtree(s / "anchors_core"), "no readable array 'anchors_core'"),
        (lambda s: rewrite(s, "core", np.zeros((20, *RANKS), np.int64)), "'core' must be float"),
        (lambda s: rewrite(s, "offsets", np.array([0, 5, 5, 12, 19])), "'offsets' does not index the 20 tokens"),
        (lambda s: rewrite(s, "anchors", np.zeros((3, 1, L, D), np.float16)), "'anchors' must be float .* one row per example"),
    ]
    for fn, fragment in cases:
        with pytest.raises(ArtifactError, match=fragment):
            targets.read_targets(damaged(good, work, fn), IDS)
    with pytest.raises(ArtifactError, match="targets store is missing"):
        targets.read_targets(tmp_path / "none.zarr", IDS)


# ---------------------------------------------------------------- factorize shard files
def test_factor_state_files_round_trip_and_refuse_others(tmp_path):
    rng = np.random.default_rng(8)
    diag = ExampleDiagnostics(2, rng.uniform(size=3), np.array([4, 0, 2]), rng.uniform(size=3), rng.uniform(size=3))
    state = FactorState(steps=["grams", "diagnostics"], tokens=6, mean=rng.standard_normal((L, D)), scale=np.ones(L),
                        U_layer=rng.standard_normal((L, 2)), errors=[0.5, 0.25], diagnostics=diag)
    factor_state.save_state(tmp_path / "s.npz", state, {"step": "diagnostics", "config_hash": "c"})
    back, meta = factor_state.load_state(tmp_path / "s.npz")
    assert meta["kind"] == "state" and meta["fingerprint"] == factor_state.fingerprint(factor_state.pack(state))
    assert back.steps == state.steps and back.errors == state.errors and back.tokens == 6 and back.U_hidden is None
    np.testing.assert_array_equal(back.diagnostics.cot_length, [4, 0, 2])
    assert back.diagnostics.first == 2
    acc = GramAccumulator.empty(L, D)
    acc.update(rng.standard_normal((5, L, D)), np.zeros((L, D)), np.ones(L))
    factor_state.save_partial(tmp_path / "p.npz", acc, {"step": "grams", "shard": 0})
    part, meta = factor_state.load_partial(tmp_path / "p.npz")
    np.testing.assert_array_equal(part.gram_hidden, acc.gram_hidden)
    assert meta == {"kind": "partial", "step": "grams", "shard": 0} and part.count == 5
    with pytest.raises(ArtifactError, match="not a factorize state file"):
        factor_state.load_state(tmp_path / "p.npz")
    with pytest.raises(ArtifactError, match="not a factorize partial file"):
        factor_state.load_partial(tmp_path / "s.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "p.npz").read_bytes()[:100])
    with pytest.raises(ArtifactError, match="not a readable factorize partial file"):
        factor_state.load_partial(tmp_path / "cut.npz")
    with pytest.raises(ArtifactError, match="state file is missing"):
        factor_state.load_state(tmp_path / "none.npz")
