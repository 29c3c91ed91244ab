"""Disk-space check before a trajectory store (hidden or targets) is written."""
from __future__ import annotations

import shutil
from collections import namedtuple

import numpy as np
import pytest

from lori.artifacts import hidden, targets
from lori.artifacts.store import ArtifactError, check_disk_space

Usage = namedtuple("Usage", "total used free")


def test_disk_space_check_stops_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * 2**30, 9 * 2**30, 2**30))
    check_disk_space(tmp_path / "ok.zarr", 2**29, "dump less")                   # half a GiB of one free: fine
    with pytest.raises(ArtifactError, match=r"needs about 2 GiB but only 1 GiB is free .*; dump less"):
        check_disk_space(tmp_path / "big.zarr", 2 * 2**30, "dump less")
    # units that show the difference: 20.4 MiB needed, 20.1 MiB free (not "0.02 GiB" twice)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(2**30, 2**30 - 21_100_000, 21_100_000))
    with pytest.raises(ArtifactError, match=r"needs about 20\.4 MiB but only 20\.1 MiB is free"):
        check_disk_space(tmp_path / "big.zarr", int(20.4 * 2**20), "dump less")
    assert not (tmp_path / "big.zarr").exists()


def test_trajectory_stores_too_big_for_the_disk_are_not_started(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(2**30, 2**30 - 1000, 1000))
    offsets = np.array([0, 300, 700], dtype=np.int64)
    with pytest.raises(ArtifactError, match="dump_hidden.calibration_size"):
        with hidden.create(tmp_path / "h.zarr", offsets, ["a", "b"], [1, 2], 8, {}):
            pytest.fail("the store must not be started")
    with pytest.raises(ArtifactError, match="fewer examples"):
        with targets.create(tmp_path / "t.zarr", offsets, ["a", "b"], [1, 2], 8, (1, 2), {}):
            pytest.fail("the store must not be started")
    assert not any(tmp_path.iterdir())
