"""Tests for lori.artifacts.store: atomic outputs and self-describing Zarr stores."""
from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from lori.artifacts.store import (ArtifactError, atomic_path, atomic_write_text, group_attrs, open_store, read_array, read_json,
                     write_json, zarr_create, zarr_put)


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


# ---------------------------------------------------------------- atomic_path
def test_atomic_file_replaces_old(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with atomic_path(p) as tmp:
        assert tmp != p and tmp.parent == p.parent and tmp.name.startswith(".out.txt.tmp-")
        tmp.write_text("new")
        assert p.read_text() == "old"          # not visible until the block completes
    assert p.read_text() == "new"
    assert siblings(p) == ["out.txt"]


def test_atomic_file_failure_keeps_old(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert siblings(p) == ["out.txt"]


def test_atomic_file_failure_without_previous_output(tmp_path):
    p = tmp_path / "deep" / "out.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert not p.exists()
    assert siblings(p) == []


def test_atomic_dir_replaces_old(tmp_path):
    p = tmp_path / "store.zarr"
    p.mkdir()
    (p / "old_file").write_text("x")
    with atomic_path(p) as tmp:
        tmp.mkdir()
        (tmp / "new_file").write_text("y")
    assert sorted(os.listdir(p)) == ["new_file"]
    assert siblings(p) == ["store.zarr"]


def test_atomic_dir_failure_keeps_old(tmp_path):
    p = tmp_path / "store.zarr"
    p.mkdir()
    (p / "old_file").write_text("x")
    with pytest.raises(ValueError):
        with atomic_path(p) as tmp:
            tmp.mkdir()
            (tmp / "new_file").write_text("y")
            raise ValueError("fail")
    assert sorted(os.listdir(p)) == ["old_file"]
    assert (p / "old_file").read_text() == "x"
    assert siblings(p) == ["store.zarr"]


def test_atomic_file_over_old_dir(tmp_path):
    p = tmp_path / "thing"
    p.mkdir()
    (p / "f").write_text("x")
    with atomic_path(p) as tmp:
        tmp.write_text("now a file")
    assert p.is_file() and p.read_text() == "now a file"
    assert siblings(p) == ["thing"]


def test_stale_temp_is_cleared(tmp_path):
    p = tmp_path / "out.txt"
    stale = tmp_path / f".out.txt.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "junk").write_text("j")
    atomic_write_text(p, "fresh")
    assert p.read_text() == "fresh" and siblings(p) == ["out.txt"]


# ---------------------------------------------------------------- json
def test_json_round_trip_and_numpy(tmp_path):
    p = tmp_path / "a.json"
    write_json(p, {"i": np.int64(3), "f": np.float32(0.5), "a": np.arange(3), "p": tmp_path})
    assert read_json(p) == {"i": 3, "f": 0.5, "a": [0, 1, 2], "p": str(tmp_path)}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(tmp_path / "b.json", {"x": object()})
    assert not (tmp_path / "b.json").exists()


def test_read_json_errors(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        read_json(tmp_path / "none.json")
    p = tmp_path / "bad.json"
    p.write_text('{"a": 1,\n')
    with pytest.raises(ArtifactError, match=r"bad.json: not valid JSON .* line 2"):
        read_json(p)


# ---------------------------------------------------------------- zarr
def make_store(path):
    g = zarr.open_group(str(path), mode="w")
    g.attrs.update({"stage": "test", "config_hash": "abc"})
    zarr_put(g, "states", np.arange(24, dtype=np.float16).reshape(4, 2, 3), ["token", "layer", "hidden"], note="n")
    zarr_put(g, "offsets", np.array([0, 1, 4], dtype=np.int64), ["example1"])
    zarr_put(g, "empty", np.zeros((0, 3), np.float32), ["row", "hidden"])
    return g


def test_zarr_put_dims_attrs_and_data(tmp_path):
    p = tmp_path / "s.zarr"
    make_store(p)
    g = open_store(p, required=["states", "offsets"])
    assert g["states"].attrs["_ARRAY_DIMENSIONS"] == ["token", "layer", "hidden"]
    assert g["states"].attrs["note"] == "n"
    assert g["offsets"].attrs["_ARRAY_DIMENSIONS"] == ["example1"]
    assert g["states"].dtype == np.float16
    np.testing.assert_array_equal(read_array(g, "states"), np.arange(24).reshape(4, 2, 3))
    assert read_array(g, "empty").shape == (0, 3)
    assert group_attrs(g) == {"stage": "test", "config_hash": "abc"}


def test_zarr_create_dim_count_checked(tmp_path):
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    with pytest.raises(AssertionError, match="x: 1 dims for shape"):
        zarr_create(g, "x", (2, 3), "float32", ["token"])


def test_open_store_missing_path(tmp_path):
    with pytest.raises(ArtifactError, match="hidden store is missing"):
        open_store(tmp_path / "nope.zarr", kind="hidden")


def test_open_store_not_a_group(tmp_path):
    p = tmp_path / "plain"
    p.mkdir()
    with pytest.raises(ArtifactError, match="not a readable Zarr group"):
        open_store(p)


def test_open_store_missing_array_named(tmp_path):
    p = tmp_path / "s.zarr"
    make_store(p)
    with pytest.raises(ArtifactError) as e:
        open_store(p, required=["states", "anchors"], kind="hidden")
    assert "hidden store has no readable array 'anchors'" in str(e.value)
    assert str(p) in str(e.value)


def test_read_array_corrupt_chunk_named(tmp_path):
    p = tmp_path / "s.zarr"
    make_store(p)
    chunks = [q for q in (p / "states").rglob("*") if q.is_file() and q.name != "zarr.json"]
    assert chunks
    for q in chunks:
        q.write_bytes(b"\x00garbage")
    g = open_store(p, required=["states"])
    with pytest.raises(ArtifactError, match="array 'states' is unreadable or corrupt"):
        read_array(g, "states", p)


def test_xarray_opens_store(tmp_path):
    xr = pytest.importorskip("xarray")
    p = tmp_path / "s.zarr"
    make_store(p)
    ds = xr.open_zarr(p, consolidated=False)
    assert ds["states"].dims == ("token", "layer", "hidden")
    assert ds["offsets"].dims == ("example1",)
    np.testing.assert_array_equal(ds["states"].values, np.arange(24).reshape(4, 2, 3))


def test_zarr_put_strings(tmp_path):
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    zarr_put(g, "example_id", np.array(["train-0", "ünï", ""]), ["example"])
    zarr_put(g, "no_ids", np.array([], dtype=str), ["example0"])
    g = open_store(tmp_path / "s.zarr", required=["example_id"])
    assert g["example_id"].attrs["_ARRAY_DIMENSIONS"] == ["example"]
    assert list(read_array(g, "example_id")) == ["train-0", "ünï", ""]
    assert read_array(g, "no_ids").shape == (0,)


def test_a_disk_that_fills_up_mid_write_is_one_error_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """ENOSPC during a write (after any free-space check passed), simulated: the stage raises one
    ArtifactError naming its output, which the stages' hook prints as one `error:` line with exit 2,
    and neither the output nor its temporary is left behind."""
    import errno
    from pathlib import Path

    from lori import prepare_data
    from lori.cli import _excepthook

    real = Path.write_text

    def full(self, data, *args, **kwargs):          # half the text lands, then the disk is full
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "data" / "train.jsonl"
    with pytest.raises(ArtifactError) as e:
        prepare_data.main(["--split", "train", "--kind", "quickstart", "--n", "20", "--out", str(out)])
    assert not out.exists() and siblings(out) == []
    capsys.readouterr()                               # the stage's log lines so far
    with pytest.raises(SystemExit) as exit_:
        _excepthook(type(e.value), e.value, None)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: no space left on device")
