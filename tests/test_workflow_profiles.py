"""Workflow profiles (cluster, local GPU) plan the same DAG; checked with dry runs, offline."""
from __future__ import annotations

import importlib.util

import pytest

from tests.runs import MICRO, ROOT, STAGES, planned_jobs, snakemake

PROFILES = ROOT / "workflow" / "profiles"


@pytest.mark.parametrize("profile", ["local-gpu", "slurm"])
def test_profile_dry_run(profile, tmp_path):
    if profile == "slurm" and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm not installed (pip install -e '.[cluster]')")
    res = snakemake(tmp_path, "-n", "--workflow-profile", str(PROFILES / profile), configfile=MICRO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert STAGES <= set(planned_jobs(res))


def test_slurm_profile_requests_gpus_for_model_stages():
    import yaml

    cfg = yaml.safe_load((PROFILES / "slurm" / "config.yaml").read_text())
    assert cfg["executor"] == "slurm"
    for rule in ("teacher_sft", "teacher_cot", "dump_hidden", "dump_hidden_partial", "targets", "distill", "evaluate"):
        assert cfg["set-resources"][rule]["gpu"] == 1, rule
    assert "gpu" not in cfg["set-resources"]["factorize"] and "gpu" not in cfg["set-resources"]["dump_hidden_gather"]


def test_gpus_above_one_launch_training_under_torchrun(tmp_path):
    import yaml

    cfg = yaml.safe_load(MICRO.read_text())
    cfg.update(gpus=2, device="cuda")
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "-n", "-p", configfile=path)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "torchrun --standalone --nproc_per_node 2 --module lori.teacher_sft" in out
    assert "torchrun --standalone --nproc_per_node 2 --module lori.distill" in out
    assert "torchrun --standalone --nproc_per_node 2 --module lori.dump_hidden" in out
    assert "python -m lori.teacher_cot" in out          # generation and evaluation stay single-process
