"""The Snakemake DAG: lint, dry runs, config validation before any job, and one real micro run with cache checks."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.runs import MICRO, ROOT, STAGES, planned_jobs, snakemake


def test_workflow_passes_snakemake_lint(tmp_path):
    """``snakemake --lint`` (the checks of the Snakemake workflow catalog) reports nothing (~4 s)."""
    res = snakemake(tmp_path, "--lint", configfile=MICRO)
    out = res.stdout + res.stderr
    lints = re.findall(r"^Lints for (.*):$", out, re.M)
    assert res.returncode == 0 and not lints, f"lints for {'; '.join(lints) or '?'}\n{out[-4000:]}"


def test_default_config_dry_run_plans_every_stage(tmp_path):
    res = snakemake(tmp_path, "-n", configfile=ROOT / "config" / "config.yaml")
    assert res.returncode == 0, res.stderr
    jobs = planned_jobs(res)
    assert STAGES <= set(jobs)
    # cot_sft, no_cot, lori, lori_steps and the FLOPs-matched no_cot_flops, each on 2 benchmarks;
    # train, the two benchmarks and the validation split
    assert jobs["evaluate"] == 5 * 2 and jobs["distill"] == 4 and jobs["prepare_data"] == 4


def test_bad_config_fails_before_any_job(tmp_path):
    cfg = yaml.safe_load(MICRO.read_text())
    cfg["teacher_sft"]["steps"] = "many"
    cfg["factorize"]["rnak_layer"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=bad)
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "teacher_sft.steps" in err and "rnak_layer" in err
    assert not (tmp_path / "results").exists()


def cfg_steps(run: Path, student: str) -> int:
    """Optimizer steps a student actually ran (its last metrics row)."""
    rows = (run / "students" / f"{student}_metrics.jsonl").read_text().splitlines()
    return json.loads(rows[-1])["step"]


@pytest.mark.integration
def test_micro_dag_runs_and_caches(tmp_path):
    res = snakemake(tmp_path, configfile=MICRO)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "results" / "micro"
    assert (run / "report" / "report.md").exists() and (run / "report" / "report.html").exists()
    # every stage ends its log with one summary line (lori.cli.stage_summary)
    logs = sorted(run.glob("logs/**/*.log"))
    assert run / "logs" / "distill" / "lori.log" in logs and run / "logs" / "teacher_sft.log" in logs, logs
    for log in logs:
        assert re.search(r"INFO done \S+.*: [\d.]+ s", log.read_text()), log

    # `snakemake --report` of the same run: every category, captions rendered with their wildcards
    page_path = tmp_path / "snakemake-report.html"
    res = snakemake(tmp_path, "--report", str(page_path), configfile=MICRO)
    assert res.returncode == 0, res.stderr[-3000:]
    page = page_path.read_text()
    categories = json.loads(re.search(r"categories = (\{.*?\});", page).group(1))
    assert set(categories) == {"data", "teacher", "low-rank", "students", "evaluation"}
    assert "results/micro/report/spectrum.png" in categories["low-rank"]["Other"]
    results = json.loads(re.search(r"var results = (\{.*?\});\n", page, re.S).group(1))
    assert ">lori</tt> on <tt" in results["results/micro/eval/lori/test.json"]["caption"]
    assert results["results/micro/report/agreement.png"]["mime_type"] == "image/png"

    # the compute-matched No-CoT got more steps than LoRi's 3 (its steps are cheaper), and says so
    match = json.loads((run / "students" / "no_cot_matched" / "train_config.json").read_text())["compute_match"]
    assert match["ref_steps"] == 3 and match["steps"] > 3 and match["steps"] == cfg_steps(run, "no_cot_matched")
    assert "thought_shuffle" in json.loads((run / "eval" / "lori" / "test.json").read_text())
    assert "| test | no_cot_matched |" in (run / "report" / "report.md").read_text()

    # a second run has nothing to do
    assert planned_jobs(snakemake(tmp_path, "-n", configfile=MICRO)) == {}

    cfg = yaml.safe_load(MICRO.read_text())
    # one distillation knob: only that student, its evaluations and the report
    cfg["distill"]["lori"]["alpha"] = 0.5
    changed = tmp_path / "alpha.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    # (the compute-matched student follows LoRi: its step budget comes from LoRi's metrics)
    assert planned_jobs(snakemake(tmp_path, "-n", configfile=changed)) == {"distill": 2, "evaluate": 2, "report": 1, "all": 1}

    # the factorization rank: factorize and everything downstream of it, never the teacher or the dump
    cfg["distill"]["lori"].pop("alpha")
    cfg["factorize"]["rank_hidden"] = 3
    changed.write_text(yaml.safe_dump(cfg))
    assert planned_jobs(snakemake(tmp_path, "-n", configfile=changed)) == {
        "factorize": 1, "targets": 1, "distill": 2, "evaluate": 2, "report": 1, "all": 1}
