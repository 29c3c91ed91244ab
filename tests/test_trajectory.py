"""Disk-space check before a trajectory store is written."""
from __future__ import annotations

import shutil
from collections import namedtuple

import pytest

from lori.artifacts.store import ArtifactError
from lori.model.trajectory import check_disk_space

Usage = namedtuple("Usage", "total used free")


def test_disk_space_check_stops_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * 2**30, 9 * 2**30, 2**30))
    check_disk_space(tmp_path / "ok.zarr", 2**29)                     # half a GiB of one free: fine
    with pytest.raises(ArtifactError, match=r"needs about 2\.00 GiB but only 1\.00 GiB is free"):
        check_disk_space(tmp_path / "big.zarr", 2 * 2**30)
    assert not (tmp_path / "big.zarr").exists()
