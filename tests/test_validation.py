"""Validation during training (accuracy-vs-compute curves): the loop's validation rows, that
validating leaves training bitwise unchanged, the training stages' --val, the config keys that turn it
on (and leave every other run's commands alone), and the report's accuracy_vs_compute figure."""
from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lori.config import ConfigError, load_config, stage_args, validate_config, validates
from lori.training.loop import OptimConfig, fit
from tests.test_train import Killed, make_problem, state
from tests.tiny import RUNTIME

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT / "config" / "profiles" / "quickstart-curves.yaml"
VAL_KEYS = {"val_accuracy", "val_n", "train_s", "flops_total"}
CFG = dict(steps=12, batch_size=8, lr=1e-2, warmup_steps=3, log_every=2)
FLOPS = 100.0                       # the per-step "flops" term of the test problem


def with_flops(step_fn):
    def loss_step(idx):
        return {**step_fn(idx), "flops": torch.tensor(FLOPS)}
    return loss_step


def noisy_evaluator(module, calls: list, sleep: float = 0.0):
    """An evaluator that draws from every RNG (the loop must restore them) and records the mode it ran in."""
    def evaluate():
        calls.append((module.training, torch.is_grad_enabled()))
        torch.randn(3), random.random(), np.random.rand()
        torch.nn.functional.dropout(torch.ones(4), 0.5, training=True)
        time.sleep(sleep)
        return {"val_accuracy": 0.25 * len(calls), "val_n": 7}
    return evaluate


def strip(rows, keys=VAL_KEYS | {"sec_per_step"}):
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


# ---------------------------------------------------------------- the loop
@pytest.mark.parametrize("eval_every, val_steps, logged", [
    (4, [4, 8, 12], [2, 4, 6, 8, 10, 12]),
    (5, [5, 10, 12], [2, 4, 5, 6, 8, 10, 12]),     # not a multiple of log_every: the eval steps log rows too
])
def test_validation_rows_at_the_right_steps_and_training_unchanged(eval_every, val_steps, logged):
    model, step_fn = make_problem()
    plain = fit(model, with_flops(step_fn), 40, OptimConfig(**CFG), seed=3)
    plain_state = state(model)

    model, step_fn = make_problem()
    model.train()
    calls = []
    rows = fit(model, with_flops(step_fn), 40, OptimConfig(**CFG, eval_every=eval_every), seed=3,
               evaluator=noisy_evaluator(model, calls))
    # evaluation consumed random numbers and switched modes, yet the weights are bitwise those without it
    assert all(torch.equal(v, plain_state[k]) for k, v in state(model).items())
    assert calls == [(False, False)] * len(val_steps) and model.training
    assert [r["step"] for r in rows] == logged
    val = [r for r in rows if "val_accuracy" in r]
    assert [r["step"] for r in val] == val_steps
    for i, r in enumerate(val):
        assert VAL_KEYS <= set(r) and r["val_n"] == 7 and r["val_accuracy"] == 0.25 * (i + 1)
        assert r["flops_total"] == FLOPS * r["step"]
    assert all(not (VAL_KEYS & set(r)) for r in rows if r not in val)
    if eval_every % CFG["log_every"] == 0:          # same rows as without validation, plus the new keys
        assert strip(rows) == strip(plain)


def test_train_s_excludes_validation_time():
    model, step_fn = make_problem()
    pause, calls = 0.2, []
    start = time.perf_counter()
    rows = fit(model, step_fn, 40, OptimConfig(**CFG, eval_every=4), seed=3,
               evaluator=noisy_evaluator(model, calls, sleep=pause))
    wall = time.perf_counter() - start
    train_s = [r["train_s"] for r in rows if "train_s" in r]
    assert len(train_s) == 3 and train_s == sorted(train_s) and train_s[0] > 0
    assert train_s[-1] <= wall - 3 * pause              # the three validations' sleep is not training time
    assert rows[-1]["sec_per_step"] * 12 == pytest.approx(train_s[-1], rel=1e-6)
    assert "flops_total" in rows[-1] and rows[-1]["flops_total"] == 0.0   # this problem logs no flops


def test_evaluator_is_ignored_when_eval_every_is_0():
    model, step_fn = make_problem()
    calls = []
    rows = fit(model, step_fn, 40, OptimConfig(**CFG), seed=3, evaluator=noisy_evaluator(model, calls))
    assert calls == [] and all(not (VAL_KEYS & set(r)) for r in rows)


def test_resume_keeps_the_validation_rows_and_totals(tmp_path):
    cfg = OptimConfig(**CFG, eval_every=4, checkpoint_every=4)
    model, step_fn = make_problem()
    straight = fit(model, with_flops(step_fn), 40, cfg, seed=3, ckpt=tmp_path / "a.ckpt", run_id="r",
                   evaluator=noisy_evaluator(model, []))
    weights = state(model)

    model, step_fn = make_problem()
    calls = []
    with pytest.raises(Killed):
        fit(model, with_flops(lambda i: step_fn(i, kill_at=10)), 40, cfg, seed=3, ckpt=tmp_path / "b.ckpt",
            run_id="r", evaluator=noisy_evaluator(model, calls))
    model, step_fn = make_problem()
    resumed = fit(model, with_flops(step_fn), 40, cfg, seed=3, ckpt=tmp_path / "b.ckpt", run_id="r",
                  evaluator=noisy_evaluator(model, calls))
    assert all(torch.equal(v, weights[k]) for k, v in state(model).items())
    # the rows before the checkpoint (step 8) come back from it; validation at 12 runs after the resume
    assert strip(resumed, {"sec_per_step", "train_s", "val_accuracy"}) == \
        strip(straight, {"sec_per_step", "train_s", "val_accuracy"})
    train_s = [r["train_s"] for r in resumed if "train_s" in r]
    assert train_s == sorted(train_s) and [r["flops_total"] for r in resumed if "flops_total" in r] == \
        [FLOPS * s for s in (4, 8, 12)]


# ---------------------------------------------------------------- the stages
@pytest.fixture(scope="module")
def val_records(tiny_teacher, tmp_path_factory) -> Path:
    from lori import prepare_data

    out = tmp_path_factory.mktemp("val") / "validation.jsonl"
    prepare_data.main(["--split", "validation", "--kind", "quickstart", "--n", "6", "--out", str(out),
                       "--exclude", f"{tiny_teacher.train},{tiny_teacher.test}"])
    return out


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("method", ["lori", "icot_si"])
def test_distill_validates_every_eval_every_steps_like_evaluate(tiny_teacher, val_records, tmp_path, method):
    from lori import distill, evaluate

    common = ["--teacher", str(tiny_teacher.teacher), "--records", str(tiny_teacher.train), "--method", method,
              "--steps", "4", "--batch-size", "8", "--log-every", "2", "--checkpoint-every", "0", *RUNTIME]
    if method == "lori":
        common += ["--alpha", "0", "--gamma", "0", "--latent-steps", "2"]
    else:            # iCoT-SI trains on CoT with tokens removed, and is evaluated without any
        common += ["--steps-per-stage", "8", "--remove-all-beyond", "3"]
    distill.main([*common, "--out", str(tmp_path / "plain"), "--metrics", str(tmp_path / "plain.jsonl")])
    distill.main([*common, "--out", str(tmp_path / "val"), "--metrics", str(tmp_path / "val.jsonl"),
                  "--val", str(val_records), "--eval-every", "2", "--val-batch-size", "4"])
    plain, rows = read(tmp_path / "plain.jsonl"), read(tmp_path / "val.jsonl")
    assert strip(rows) == strip(plain)                  # the same losses, lr and flops, bitwise
    assert [r["step"] for r in rows if "val_accuracy" in r] == [2, 4]
    assert all(r["val_n"] == 6 and 0 <= r["val_accuracy"] <= 1 for r in rows if "val_n" in r)
    # the last validation is the evaluate stage's accuracy of the saved student on the same problems
    summary = evaluate.run(evaluate.EvaluateConfig(method=method, thought_shuffle=False, device="cpu", threads=1),
                           str(tmp_path / "val"), str(val_records), str(tmp_path / "eval.jsonl"))
    assert rows[-1]["val_accuracy"] == summary["accuracy"]


def test_teacher_sft_validates_with_its_cot(tiny_teacher, val_records, tmp_path):
    from lori import teacher_sft
    from tests.tiny import TINY

    teacher_sft.main(["--train", str(tiny_teacher.train), "--out", str(tmp_path / "t"), "--metrics",
                      str(tmp_path / "t.jsonl"), "--scratch", TINY, "--steps", "2", "--batch-size", "8",
                      "--log-every", "1", "--val", str(val_records), "--eval-every", "1",
                      "--val-max-new-tokens", "8", *RUNTIME])
    rows = read(tmp_path / "t.jsonl")
    assert [r["step"] for r in rows if "val_accuracy" in r] == [1, 2]
    assert rows[1]["flops_total"] == pytest.approx(rows[0]["flops"] + rows[1]["flops"])


def test_eval_every_without_a_validation_file_is_an_error(tiny_teacher, tmp_path):
    from lori import distill

    from lori.artifacts.store import ArtifactError

    with pytest.raises(ArtifactError, match="eval_every 1 needs a validation split"):
        distill.main(["--teacher", str(tiny_teacher.teacher), "--records", str(tiny_teacher.train), "--method",
                      "no_cot", "--steps", "2", "--batch-size", "8", "--eval-every", "1", "--out",
                      str(tmp_path / "s"), *RUNTIME])


# ---------------------------------------------------------------- config
@pytest.fixture(scope="module")
def quickstart() -> dict:
    """The default config without its validation split: what a config that sets none gets."""
    config = copy.deepcopy(load_config(ROOT / "config" / "config.yaml"))
    config["data"]["validation"] = None
    config["teacher_sft"]["eval_every"] = config["distill"]["common"]["eval_every"] = 0
    return validate_config(config)


def fresh(config: dict) -> dict:
    """A copy of a validated config to change (validation fills defaults in place)."""
    return copy.deepcopy(config)


def test_validation_is_off_by_default_and_adds_no_flag(quickstart):
    assert quickstart["data"]["validation"] is None
    assert quickstart["teacher_sft"]["eval_every"] == 0 and quickstart["distill"]["common"]["eval_every"] == 0
    for stage, student in (("teacher_sft", None), ("distill", "lori"), ("distill", "no_cot")):
        keys = set(stage_args(quickstart, stage, student=student))
        assert not keys & {"eval_every", "val_batch_size", "val_max_new_tokens"}, stage
        assert not validates(quickstart, stage, student)


def test_the_quickstart_validates_every_300_steps():
    config = load_config(ROOT / "config" / "config.yaml")
    for stage, student, every in (("teacher_sft", None, 1400), ("distill", "lori", 300), ("distill", "no_cot", 300)):
        assert stage_args(config, stage, student=student)["eval_every"] == every
        assert validates(config, stage, student)
    assert stage_args(config, "prepare_data", split="validation")["n"] == 300


def test_the_curves_profile_turns_validation_on():
    config = load_config(CURVES)
    for stage, student, every in (("teacher_sft", None, 1400), ("distill", "lori", 100), ("distill", "no_cot", 100)):
        args = stage_args(config, stage, student=student)
        assert (args["eval_every"], args["val_batch_size"], args["val_max_new_tokens"]) == (every, 250, 96)
        assert validates(config, stage, student)
    spec = stage_args(config, "prepare_data", split="validation")
    assert spec["split"] == "validation" and spec["n"] == 300 and spec["kind"] == "quickstart"
    assert config["data"]["validation"]["n"] == 300


def test_validation_only_when_both_are_set(quickstart):
    config = fresh(quickstart)
    config["data"]["validation"] = {"kind": "quickstart", "n": 20}
    config = validate_config(config)
    assert config["data"]["validation"]["path"] is None            # dataset defaults filled
    assert not validates(config, "distill", "lori")                # eval_every still 0
    config["distill"]["common"]["eval_every"] = 10
    assert validates(config, "distill", "lori") and not validates(config, "teacher_sft")


@pytest.mark.parametrize("mutate, fragment", [
    (lambda c: c["distill"]["common"].update(eval_every=50), "distill.common.eval_every: 50 needs a validation split"),
    (lambda c: c["teacher_sft"].update(eval_every=50), "teacher_sft.eval_every: 50 needs a validation split"),
    (lambda c: c["data"].update(validation={"kind": "quickstart", "n": 5},
                                benchmarks={"validation": {"kind": "quickstart", "n": 5}}),
     "data.benchmarks.validation"),
    (lambda c: c["data"].update(validation={"kind": "gsm8k"}), "data.validation: kind 'gsm8k' needs a path"),
])
def test_inconsistent_validation_configs(quickstart, mutate, fragment):
    config = fresh(quickstart)
    mutate(config)
    with pytest.raises(ConfigError, match="inconsistent config") as e:
        validate_config(config)
    assert fragment in str(e.value)


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["distill"]["common"].update(eval_every=-1), "distill.common.eval_every"),
    (lambda c: c["data"].update(validation={"n": 5}), "data.validation"),
    (lambda c: c["data"].update(validation=300), "data.validation"),
])
def test_schema_rejects_bad_validation_keys(quickstart, mutate, key):
    config = fresh(quickstart)
    mutate(config)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(config)


def test_curves_profile_plans_the_validation_split_and_val_flags(tmp_path):
    from tests.runs import snakemake

    res = snakemake(tmp_path, "-n", "-p", "--forceall", configfile=CURVES)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    cmd = next(line for line in out.splitlines() if "--split validation" in line)
    data = "results/quickstart-curves/data"
    assert f"--exclude {data}/train.jsonl,{data}/test.jsonl,{data}/longer.jsonl" in cmd
    for job in ("lori.teacher_sft", "lori.distill"):
        lines = [line for line in out.splitlines() if f"python -m {job} " in line]
        assert lines and all(f"--val {data}/validation.jsonl" in line and "--eval-every " in line
                             for line in lines), job
    assert "report/accuracy_vs_compute.png" in out


# ---------------------------------------------------------------- the figure
def curve_rows(accuracies, flops_per_step, sec_per_step, every=100) -> list[dict]:
    rows = []
    for i, acc in enumerate(accuracies, 1):
        step = i * every
        rows.append({"step": step - every // 2, "loss": 1.0 / i, "flops": flops_per_step})
        rows.append({"step": step, "loss": 1.0 / i, "flops": flops_per_step, "flops_total": step * flops_per_step,
                     "train_s": step * sec_per_step, "val_accuracy": acc, "val_n": 300})
    return rows


def test_accuracy_vs_compute_is_drawn_from_validation_rows(tmp_path):
    from lori.analysis.figures import FIGURES, NOT_LOSSES, draw_figures, has_validation, plot_accuracy_compute

    metrics = {"teacher": curve_rows([0.3, 0.8], 2e9, 0.1), "lori": curve_rows([0.05, 0.1, 0.2], 1.2e9, 0.3),
               "lori-seed1": curve_rows([0.04, 0.12, 0.18], 1.2e9, 0.3), "no_cot": curve_rows([0.05, 0.08, 0.09], 1e9, 0.15)}
    assert has_validation(metrics) and VAL_KEYS <= NOT_LOSSES and "accuracy_vs_compute" in FIGURES
    plot_accuracy_compute(metrics, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert b"teacher CoT" in (tmp_path / "curves.svg").read_bytes()
    assert b"lori (2 seeds)" in (tmp_path / "curves.svg").read_bytes()
    summaries = [{"method": "lori", "bench": "test", "accuracy": 0.1, "ci_low": 0.05, "ci_high": 0.2,
                  "generated_tokens": 3.0, "latent_steps": 6}]
    (tmp_path / "with").mkdir()
    figures, missing = draw_figures(tmp_path / "with", summaries, None, metrics, {})
    assert "accuracy_vs_compute" not in missing and "accuracy_vs_compute.png" in [f for f, _ in figures]
    # a run without validation rows (or with only the teacher's) gets the labelled placeholder
    no_val = {name: strip(rows, VAL_KEYS) for name, rows in metrics.items()}
    assert not has_validation(no_val) and not has_validation({"teacher": metrics["teacher"]})
    (tmp_path / "without").mkdir()
    figures, missing = draw_figures(tmp_path / "without", summaries, None, no_val, {})
    assert "data.validation" in missing["accuracy_vs_compute"]
    assert (tmp_path / "without" / "accuracy_vs_compute.png").exists()
    assert "accuracy_vs_compute.png" not in [f for f, _ in figures]


@pytest.mark.slow
@pytest.mark.integration
def test_micro_dag_with_validation_draws_the_curves(tmp_path):
    """The micro DAG (.test/config.yaml) with a validation split: the split excludes train and test,
    every training job logs validation rows, and the report draws accuracy_vs_compute (~2 min)."""
    import yaml

    from lori.analysis.figures import FIGURES
    from lori.data.records import read_records
    from tests.runs import MICRO, snakemake

    cfg = yaml.safe_load(MICRO.read_text())
    cfg["data"]["validation"] = {"kind": "quickstart", "n": 8}
    cfg["teacher_sft"]["eval_every"] = 2
    cfg["distill"]["common"]["eval_every"] = 2
    path = tmp_path / "micro-val.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "results" / "micro"
    questions = {split: {r.question for r in read_records(run / "data" / f"{split}.jsonl")}
                 for split in ("train", "test", "validation")}
    assert len(questions["validation"]) == 8
    assert not questions["validation"] & (questions["train"] | questions["test"])
    for metrics in [run / "teacher_metrics.jsonl", *run.glob("students/*_metrics.jsonl")]:
        val = [r for r in read(metrics) if "val_accuracy" in r]
        assert val and val[-1]["step"] == read(metrics)[-1]["step"], metrics
    md = (run / "report" / "report.md").read_text()
    assert "accuracy_vs_compute.png" in md and all((run / "report" / f"{n}.png").exists() for n in FIGURES)
