"""Nothing lost, nothing silent: kill -9 mid-stage then rerun, CPU determinism, safe loading.

The kill tests start the stage CLI as ``python -m lori.<stage>`` in a subprocess, SIGKILL it
while it writes (a training checkpoint or the temporary sibling of the output exists), check
that nothing appeared under the real output name, rerun, and compare with an uninterrupted
run byte for byte (weights) or array for array (Zarr).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from lori import distill, dump_hidden, factorize, targets, teacher_sft
from tests.tiny import TINY, RUNTIME

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_teacher) -> dict[str, Path]:
    """The shared tiny teacher and its training data, and a directory for this module's outputs."""
    return {"train": tiny_teacher.train, "teacher": tiny_teacher.teacher, "dir": tmp_path_factory.mktemp("rel")}


def digests(path: Path) -> dict[str, str]:
    """sha256 of every file under a checkpoint directory."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def arrays(store: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(g[name][...]) for name in sorted(g.array_keys())}


def assert_same_store(a: Path, b: Path, ignore_attrs: tuple[str, ...] = ()) -> None:
    x, y = arrays(a), arrays(b)
    assert x.keys() == y.keys()
    for name in x:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    strip = lambda g: {k: v for k, v in dict(zarr.open_group(str(g), mode="r").attrs).items() if k not in ignore_attrs}  # noqa: E731
    assert strip(a) == strip(b)


def kill_when(cmd: list[str], ready, timeout: float = 120) -> None:
    """Start ``python -m <cmd>``, SIGKILL it once ``ready(pid)`` is true; fail if it ends first."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready(proc.pid):
        if proc.poll() is not None:
            pytest.fail(f"stage ended before it could be killed (rc {proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("stage never reached the kill point")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


# ---------------------------------------------------------------- kill -9, rerun, compare
def test_teacher_sft_killed_then_rerun_equals_uninterrupted(run):
    d = run["dir"]
    args = ["--train", str(run["train"]), "--scratch", TINY, "--steps", "40", "--batch-size", "8",
            "--checkpoint-every", "10", "--log-every", "5", *RUNTIME]
    teacher_sft.main([*args, "--out", str(d / "straight"), "--metrics", str(d / "straight.jsonl")])

    out = d / "killed"
    ckpt = d / "killed.ckpt"
    kill_when(["lori.teacher_sft", *args, "--out", str(out), "--metrics", str(d / "killed.jsonl")],
              lambda pid: (ckpt / "meta.json").exists())
    assert not out.exists() and not (d / "killed.jsonl").exists()      # nothing under the real names
    killed_at = json.loads((ckpt / "meta.json").read_text())["step"]
    assert 10 <= killed_at < 40

    teacher_sft.main([*args, "--out", str(out), "--metrics", str(d / "killed.jsonl")])   # resumes
    assert digests(out) == digests(d / "straight")                                    # bitwise equal weights
    assert not ckpt.exists()                                                           # removed after success
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "sec_per_step"}  # noqa: E731
                       for l in p.read_text().splitlines()]
    assert strip(d / "killed.jsonl") == strip(d / "straight.jsonl")


@pytest.mark.slow
def test_dump_hidden_killed_mid_write_then_rerun_equals_uninterrupted(run):
    d = run["dir"]
    args = ["--teacher", str(run["teacher"]), "--records", str(run["train"]), "--calibration-size", "64",
            "--batch-size", "1", *RUNTIME]
    dump_hidden.main([*args, "--out", str(d / "straight.zarr")])
    out = d / "killed.zarr"
    tmp_of = lambda pid: d / f".killed.zarr.tmp-{pid}"  # noqa: E731 - lori.artifacts.store.atomic_path's temporary sibling
    kill_when(["lori.dump_hidden", *args, "--out", str(out)], lambda pid: (tmp_of(pid) / "states").exists())
    assert not out.exists()
    dump_hidden.main([*args, "--out", str(out)])
    assert_same_store(out, d / "straight.zarr")


@pytest.mark.slow
def test_distill_killed_then_rerun_equals_uninterrupted(run):
    d = run["dir"]
    hidden, factors, tgt = d / "h.zarr", d / "f.zarr", d / "t.zarr"
    dump_hidden.main(["--teacher", str(run["teacher"]), "--records", str(run["train"]), "--out", str(hidden),
                      "--calibration-size", "32", *RUNTIME])
    factorize.main(["--hidden", str(hidden), "--out", str(factors), "--rank-layer", "2", "--rank-hidden", "4"])
    targets.main(["--teacher", str(run["teacher"]), "--records", str(run["train"]), "--factors", str(factors),
                  "--out", str(tgt), *RUNTIME])
    args = ["--method", "lori", "--teacher", str(run["teacher"]), "--records", str(run["train"]), "--targets", str(tgt),
            "--factors", str(factors), "--steps", "40", "--batch-size", "8", "--latent-steps", "2",
            "--checkpoint-every", "10", *RUNTIME]
    distill.main([*args, "--out", str(d / "s_straight")])
    out, ckpt = d / "s_killed", d / "s_killed.ckpt"
    kill_when(["lori.distill", *args, "--out", str(out)], lambda pid: (ckpt / "meta.json").exists())
    assert not out.exists()
    distill.main([*args, "--out", str(out)])
    assert digests(out) == digests(d / "s_straight") and not ckpt.exists()


# ---------------------------------------------------------------- determinism
def test_cpu_runs_are_bitwise_reproducible(run, tmp_path):
    """Same seed, same config: identical weights, hidden states and factors (CPU; see docs/reliability.md for GPU)."""
    for name in ("a", "b"):
        teacher_sft.main(["--train", str(run["train"]), "--out", str(tmp_path / f"teacher_{name}"), "--scratch", TINY,
                          "--steps", "3", "--batch-size", "8", "--seed", "7", *RUNTIME])
        dump_hidden.main(["--teacher", str(tmp_path / f"teacher_{name}"), "--records", str(run["train"]),
                          "--out", str(tmp_path / f"h_{name}.zarr"), "--calibration-size", "16", *RUNTIME])
        factorize.main(["--hidden", str(tmp_path / f"h_{name}.zarr"), "--out", str(tmp_path / f"f_{name}.zarr"),
                        "--rank-layer", "2", "--rank-hidden", "4"])
    assert digests(tmp_path / "teacher_a") == digests(tmp_path / "teacher_b")
    # the stores name the teacher they came from (a path), otherwise identical
    assert_same_store(tmp_path / "h_a.zarr", tmp_path / "h_b.zarr", ignore_attrs=("model",))
    assert_same_store(tmp_path / "f_a.zarr", tmp_path / "f_b.zarr", ignore_attrs=("model", "hidden_store"))


def test_artifacts_carry_config_hash_and_version(run):
    import lori
    from lori.config import config_hash

    meta = json.loads((run["teacher"] / "train_config.json").read_text())
    values = {k: v for k, v in meta.items() if k not in ("config_hash", "lori_version")}
    assert meta["config_hash"] == config_hash(values) and meta["lori_version"] == lori.__version__
    assert values["steps"] > 0 and "lr" in values       # the resolved config itself, not just its hash


# ---------------------------------------------------------------- safe loading
def test_package_source_loads_safely():
    """No pickles: every torch.load is weights_only=True; remote code never on by default."""
    problems = []
    for path in sorted((ROOT / "lori").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                problems.append(f"{path.name}: {m.group(0)}")
        for pattern in (r"trust_remote_code\s*[=:]\s*(bool\s*=\s*)?True", r"\bimport pickle\b", r"pickle\.load",
                        r"weights_only\s*=\s*False", r"\.bin\b['\"]"):
            problems += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not problems, problems


def test_offline_by_default(monkeypatch):
    from lori.hub import apply_offline_default

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("LORI_ALLOW_DOWNLOAD", raising=False)
    apply_offline_default()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")        # a user's explicit choice is honoured
    apply_offline_default()
    assert os.environ["HF_HUB_OFFLINE"] == "0"


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize("n", [1, 2, 5])
def test_statistics_are_finite_for_short_and_constant_trajectories(n):
    """Population covariance: n=1 gives a zero covariance (not NaN); a constant (zero-variance) mode
    gives zero rows; the loss and its gradients stay finite, also against an all-zero teacher."""
    import torch

    from lori.training.losses import moments, reason_loss, trajectory_moments

    core = torch.randn(3, n, 2, 4)
    core[..., 0, 0] = 1.5                                          # a zero-variance mode
    core.requires_grad_(True)
    for cov_kind in ("full", "per_layer"):
        mean, cov = moments(core, cov_kind)
        assert torch.isfinite(mean).all() and torch.isfinite(cov).all()
        if n == 1:
            assert torch.count_nonzero(cov) == 0
        teacher_mean, teacher_cov = moments(torch.randn(3, 1, 2, 4), cov_kind)   # n=1 teacher: zero covariance
        terms = reason_loss(mean, cov, teacher_mean, teacher_cov)
        terms["reason"].backward()
        assert all(torch.isfinite(v) for v in terms.values()) and torch.isfinite(core.grad).all()
        core.grad = None
    offsets = np.array([0, 0, 1, 1 + n])                           # empty, single-token and n-token examples
    means, covs = trajectory_moments(np.random.randn(1 + n, 2, 4).astype(np.float32), offsets)
    assert np.isfinite(means).all() and np.isfinite(covs).all() and not covs[0].any() and not covs[1].any()
