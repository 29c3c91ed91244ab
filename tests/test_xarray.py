"""Every Zarr store the pipeline writes opens with xarray as written: no warning, named dims, the
layer indices and example ids as coordinates, and each array's description and units from its contract."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

xr = pytest.importorskip("xarray", reason="pip install -e '.[xarray]'")

from lori.artifacts import factors, hidden, targets  # noqa: E402
from tests.test_artifacts import IDS, OFFSETS, factor_arrays, factor_attrs, states_of, write_hidden, write_targets  # noqa: E402


def open_quietly(path) -> "xr.Dataset":
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # e.g. "Failed to open Zarr store with consolidated metadata"
        return xr.open_zarr(str(path))


def check_contract(ds, contract) -> None:
    for name, spec in contract.ARRAYS.items():
        if name not in ds.variables:
            continue
        var = ds[name]
        assert var.dims == spec.dims, name
        assert var.attrs.get("description") == spec.description and spec.description, name
        assert var.attrs.get("units", "") == spec.units, name


def test_hidden_and_targets_open_with_coordinates(tmp_path):
    rng = np.random.default_rng(0)
    states, anchors = states_of(rng, 20), rng.standard_normal((4, 1, 3, 8)).astype(np.float32)
    h = open_quietly(write_hidden(tmp_path / "h.zarr", states, anchors))
    check_contract(h, hidden)
    assert h["layer"].values.tolist() == [1, 2, 3] and "layer" in h.indexes
    assert list(h.coords["example_id"].values) == IDS and h.coords["example_id"].dims == ("example",)
    assert "example_id" in h["anchors"].coords and list(h["anchor"].values) == hidden.ANCHOR_POSITIONS
    # selection by model layer and by record id, as the docs show
    np.testing.assert_array_equal(h["states"].sel(layer=2).values, states[:, 1].astype(np.float16))
    by_id = h["anchors"].swap_dims(example="example_id").sel(example_id="c")
    np.testing.assert_array_equal(by_id.values, anchors[2].astype(np.float16))
    assert h.attrs["layers"] == [1, 2, 3]

    data = write_targets(tmp_path / "t.zarr", rng)
    t = open_quietly(tmp_path / "t.zarr")
    check_contract(t, targets)
    first = t["core"].isel(token=slice(int(OFFSETS[2]), int(OFFSETS[3])))
    np.testing.assert_array_equal(first.values, data["core"][OFFSETS[2]:OFFSETS[3]])
    assert t["layer"].values.tolist() == t.attrs["layers"] and "example_id" in t["anchors_core"].coords


def test_factors_open_with_coordinates(tmp_path):
    arrays = factor_arrays(np.random.default_rng(1))
    factors.write_factors(tmp_path / "f.zarr", arrays, factor_attrs())
    f = open_quietly(tmp_path / "f.zarr")
    check_contract(f, factors)
    assert f["U_layer"].dims == ("layer", "rank_layer") and f["layer"].values.tolist() == factor_attrs()["layers"]
    assert f["spectrum_layer"].sel(layer=3).item() == arrays["spectrum_layer"][2]
    assert "example_id" in f["cot_length"].coords and f.attrs["stage"] == "factorize"


def test_a_store_without_consolidated_metadata_would_warn(tmp_path):
    """The check above can fail: xarray warns on a store that was not consolidated."""
    import zarr

    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    g.create_array("x", shape=(2,), dtype="int64", dimension_names=["i"])
    with pytest.raises(Warning, match="consolidated"):
        open_quietly(tmp_path / "plain.zarr")
