"""Workflow profiles (cluster, local GPU) plan the same DAG; checked with dry runs, offline."""
from __future__ import annotations

import importlib.util
import re

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


def planned_resources(out: str) -> dict[str, tuple[dict[str, str], str]]:
    """rule -> (its resources, its shell command) from a ``-n -p`` dry run (the first job of each rule)."""
    found = {}
    for block in re.split(r"^(?=(?:local)?rule \w+:)", out, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        if rule not in found and res and cmd:
            found[rule] = (dict(kv.split("=", 1) for kv in res.group(1).split(", ")), cmd.group(1))
    return found


@pytest.mark.parametrize("gpus", [1, 2])
def test_slurm_requests_the_gpus_and_cpus_the_command_uses(gpus, tmp_path):
    """The SLURM profile must not override a rule's `gpu`: with gpus: N a training job asks for N GPUs
    (and N x its threads CPUs) for the N torchrun processes its command starts."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm not installed (pip install -e '.[cluster]')")
    import yaml

    cfg = yaml.safe_load(MICRO.read_text())
    cfg.update(gpus=gpus, device="cuda")
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(cfg))
    profile = yaml.safe_load((PROFILES / "slurm" / "config.yaml").read_text())
    assert not any("gpu" in r for r in profile["set-resources"].values())
    res = snakemake(tmp_path, "-n", "-p", "--workflow-profile", str(PROFILES / "slurm"), configfile=path)
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = planned_resources(res.stdout + res.stderr)
    for rule in ("teacher_sft", "dump_hidden", "distill"):
        resources, command = jobs[rule]
        assert resources["gpu"] == str(gpus), (rule, resources)
        assert resources["cpus_per_gpu"] == str(profile["set-threads"][rule]), (rule, resources)
        assert ("--nproc_per_node 2" in command) == (gpus == 2), command
        assert resources["runtime"] == str(profile["set-resources"][rule]["runtime"])
        assert resources["mem_mb"] == str(profile["set-resources"][rule]["mem_mb"])
    for rule in ("teacher_cot", "targets", "evaluate"):     # single-process GPU stages
        assert jobs[rule][0]["gpu"] == "1", rule
    for rule in ("prepare_data", "factorize", "report"):     # CPU stages
        assert "gpu" not in jobs[rule][0] and jobs[rule][0]["cpus_per_task"] == \
            str(profile["set-resources"][rule]["cpus_per_task"]), rule


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
