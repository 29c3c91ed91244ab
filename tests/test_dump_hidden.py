"""dump_hidden scattered over shards (and over torchrun ranks) equals one unsharded dump, bitwise on CPU."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from lori import dump_hidden
from lori.artifacts import hidden
from lori.artifacts.hidden import SHARD_ATTRS
from lori.artifacts.store import ArtifactError
from lori.dump_hidden import batch_range
from tests.runs import MICRO, planned_jobs, snakemake
from tests.tiny import RUNTIME

N, BATCH = 20, 6      # 4 batches: 6, 6, 6, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_teacher) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dump")
    p = {"train": tiny_teacher.train, "teacher": tiny_teacher.teacher, "dir": d, "whole": d / "whole.zarr"}
    dump_hidden.main([*common(p), "--out", str(p["whole"])])
    return p


def common(p, shards: int | None = None) -> list[str]:
    args = ["--teacher", str(p["teacher"]), "--records", str(p["train"]), "--calibration-size", str(N),
            "--batch-size", str(BATCH), *RUNTIME]
    return args + (["--shards", str(shards)] if shards else [])


def partials(p, shards: int, work: Path) -> list[str]:
    parts = [str(work / f"part{i}.zarr") for i in range(shards)]
    for i, part in enumerate(parts):
        dump_hidden.main(["partial", *common(p, shards), "--shard", str(i), "--out", part])
    return parts


def assert_same_store(a: Path, b: Path) -> None:
    x, y = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert sorted(x.array_keys()) == sorted(y.array_keys()) == sorted(hidden.ARRAYS)
    for name in x.array_keys():
        np.testing.assert_array_equal(x[name][...], y[name][...], err_msg=name)   # bitwise
        assert dict(x[name].attrs) == dict(y[name].attrs), name
        assert x[name].chunks == y[name].chunks, name
    assert dict(x.attrs) == dict(y.attrs)


def test_batch_ranges_are_whole_batches_covering_once():
    for shards in (1, 2, 3, 4, 7):
        ranges = [batch_range(N, BATCH, shards, i) for i in range(shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == N
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(lo % BATCH == 0 for lo, _ in ranges)
    assert [batch_range(N, BATCH, 3, i) for i in range(3)] == [(0, 6), (6, 12), (12, 20)]
    assert batch_range(8, 6, 2, 1, lo=12) == (18, 20)          # a sub-range (a rank's share of a shard)


@pytest.mark.parametrize("shards", [3, 7])      # 7 > 4 batches: some shards are empty
def test_sharded_dump_equals_unsharded(run, tmp_path, shards):
    parts = partials(run, shards, tmp_path)
    g0 = zarr.open_group(parts[0], mode="r")
    assert g0.attrs["shard"] == 0 and g0.attrs["num_shards"] == shards
    out = tmp_path / "gathered.zarr"
    dump_hidden.main(["gather", *common(run, shards), "--parts", ",".join(reversed(parts)), "--out", str(out)])
    assert_same_store(run["whole"], out)
    assert not any(k in zarr.open_group(str(out), mode="r").attrs for k in SHARD_ATTRS)


def test_gather_refuses_missing_stale_and_mismatched_shards(run, tmp_path):
    parts = partials(run, 2, tmp_path)
    out = tmp_path / "g.zarr"
    gather = lambda ps, shards=2, extra=(): dump_hidden.main(  # noqa: E731
        ["gather", *common(run, shards), *extra, "--parts", ",".join(ps), "--out", str(out)])
    with pytest.raises(ArtifactError, match=r"need shards 0..1 once each, missing \[1\]"):
        gather(parts[:1])
    with pytest.raises(ArtifactError, match="shard 0 given twice"):
        gather([parts[0], parts[0], parts[1]])
    with pytest.raises(ArtifactError, match="shard of 2 shards, config .*; expected 3 shards"):
        gather(parts, shards=3)
    with pytest.raises(ArtifactError, match="expected 2 shards, config"):           # another config (layers)
        gather(parts, extra=["--layers", "[1]"])
    with pytest.raises(ArtifactError, match="not a dump_hidden shard store"):
        gather([str(run["whole"]), parts[1]])
    with pytest.raises(ArtifactError, match="shard store is missing"):
        gather([parts[0], str(tmp_path / "nope.zarr")])
    # records changed after the shards were dumped: stale
    stale = dict(run, train=tmp_path / "train.jsonl")
    shutil.copy(run["train"], stale["train"])
    with pytest.raises(ArtifactError, match="stale"):
        dump_hidden.main(["gather", *common(stale, 2), "--parts", ",".join(parts), "--out", str(out)])
    assert not out.exists()
    with pytest.raises(Exception, match="out of range 0..1"):
        dump_hidden.main(["partial", *common(run, 2), "--shard", "2", "--out", str(tmp_path / "x.zarr")])


def test_disk_estimate_is_logged_and_too_big_refused(run, tmp_path, monkeypatch, capfd):
    out = tmp_path / "g.zarr"
    parts = partials(run, 2, tmp_path)
    capfd.readouterr()
    dump_hidden.main(["gather", *common(run, 2), "--parts", ",".join(parts), "--out", str(out)])
    assert f"{out} will take about " in capfd.readouterr().err     # before writing

    class Tiny:
        free = 1000
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Tiny)
    with pytest.raises(ArtifactError, match="needs about .* but only 1000 B is free"):
        dump_hidden.main(["gather", *common(run, 2), "--parts", ",".join(parts), "--out", str(tmp_path / "h.zarr")])
    assert not (tmp_path / "h.zarr").exists()


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    return subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "--module", "lori.dump_hidden", *args],
                          capture_output=True, text=True, timeout=300)


def test_two_process_dump_equals_one_process(run, tmp_path):
    out = tmp_path / "ddp.zarr"
    res = _torchrun([*common(run), "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_store(run["whole"], out)
    assert [p.name for p in tmp_path.iterdir()] == ["ddp.zarr"], "rank parts must be removed"


def test_shard_dumped_by_two_processes_gathers_to_the_unsharded_dump(run, tmp_path):
    part0 = tmp_path / "part0.zarr"
    res = _torchrun(["partial", *common(run, 2), "--shard", "0", "--out", str(part0)])
    assert res.returncode == 0, res.stderr[-3000:]
    part1 = tmp_path / "part1.zarr"
    dump_hidden.main(["partial", *common(run, 2), "--shard", "1", "--out", str(part1)])
    dump_hidden.main(["gather", *common(run, 2), "--parts", f"{part0},{part1}", "--out", str(tmp_path / "g.zarr")])
    assert_same_store(run["whole"], tmp_path / "g.zarr")


# ---------------------------------------------------------------- the DAG
def test_dry_run_with_dump_shards_plans_scatter_gather(tmp_path):
    cfg = yaml.safe_load(MICRO.read_text())
    cfg["dump_hidden"].update(shards=3)
    path = tmp_path / "sharded.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "-n", "-p", configfile=path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = planned_jobs(res)
    assert jobs["dump_hidden_partial"] == 3 and jobs["dump_hidden_gather"] == 1 and jobs["factorize"] == 1
    out = res.stdout + res.stderr
    for i in range(3):
        assert "python -m lori.dump_hidden partial" in out and f"--shard {i} " in out
    assert "python -m lori.dump_hidden gather" in out and "hidden/shards/calib.part2.zarr" in out


@pytest.mark.slow          # a real Snakemake run up to the factors (~1-2 minutes on 2 CPU cores)
@pytest.mark.integration
def test_sharded_dump_under_torchrun_runs_in_the_workflow(tmp_path):
    cfg = yaml.safe_load(MICRO.read_text())
    cfg["dump_hidden"].update(shards=2)
    cfg.update(gpus=2)                       # torchrun with 2 CPU processes per training and dump job
    path = tmp_path / "sharded.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "--until", "factorize", configfile=path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "results" / "micro"
    assert (run / "lowrank" / "factors.zarr").exists()
    assert not (run / "hidden" / "shards").exists() or not any((run / "hidden" / "shards").iterdir())  # temp parts removed
    g = zarr.open_group(str(run / "hidden" / "calib.zarr"), mode="r")
    assert g.attrs["examples"] == 32 and "shard" not in g.attrs
    assert "gathered 2 shards" in (run / "logs" / "dump_hidden.log").read_text()
