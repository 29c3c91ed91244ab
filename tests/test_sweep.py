"""Students of a run (methods x sweep variants x seeds) and compute-matched budgets (lori.sweep)."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lori.config import ConfigError, load_config, validate_config
from lori.sweep import (cost_per_step, factor_overrides, lowrank_tag, matched_inputs, matched_steps, parse_lowrank_tag,
                        split_student, student_config, student_runs)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


def config_with(**changes) -> dict:
    config = copy.deepcopy(load_config(DEFAULT_CONFIG))
    config.update(changes)
    return validate_config(config)


def test_one_seed_keeps_plain_names():
    assert list(student_runs(load_config(DEFAULT_CONFIG))) == ["no_cot", "lori", "lori_steps", "no_cot_flops"]


def test_seeds_and_variants_name_every_student():
    config = config_with(seeds=[3, 7], sweep={"lori_no_cov": {"method": "lori", "w_cov": 0.0}})
    runs = student_runs(config)
    assert runs == {"no_cot": ("no_cot", 3), "no_cot-seed7": ("no_cot", 7), "lori": ("lori", 3),
                    "lori-seed7": ("lori", 7), "lori_no_cov": ("lori_no_cov", 3), "lori_no_cov-seed7": ("lori_no_cov", 7)}
    for name, (variant, seed) in runs.items():
        assert split_student(name) == (variant, None if seed == 3 else seed)


def test_a_variant_s_own_seeds_replace_the_run_s_for_it():
    """Five seeds for a headline pair without five of every student: names follow the run's first seed."""
    config = config_with(seeds=[0, 1, 2], sweep={"pair": {"method": "lori", "w_cov": 0.0, "seeds": [0, 1, 2, 3, 4]}})
    runs = student_runs(config)
    assert [n for n in runs if n.startswith("pair")] == ["pair", *(f"pair-seed{k}" for k in (1, 2, 3, 4))]
    assert [n for n in runs if n.startswith("no_cot")] == ["no_cot", "no_cot-seed1", "no_cot-seed2"]
    assert "seeds" not in student_config(config, "pair-seed4")       # not a distill knob


def test_variant_overrides_its_method_block():
    config = config_with(sweep={"lori_k3": {"method": "lori", "latent_steps": 3, "gamma": 0.0}})
    knobs = student_config(config, "lori_k3")
    base = student_config(config, "lori")
    assert knobs["method"] == "lori" and knobs["latent_steps"] == 3 and knobs["gamma"] == 0.0
    assert {k: v for k, v in knobs.items() if k not in ("latent_steps", "gamma")} == \
           {k: v for k, v in base.items() if k not in ("latent_steps", "gamma")}


def test_rank_variants_get_their_own_factors_not_distill_knobs():
    config = config_with(sweep={"lori_r1x8": {"method": "lori", "rank_layer": 1, "rank_hidden": 8},
                                "lori_rh4": {"method": "lori", "rank_hidden": 4}})
    assert factor_overrides(config, "lori_r1x8") == {"rank_layer": 1, "rank_hidden": 8}
    assert factor_overrides(config, "lori") == {}
    assert "rank_layer" not in student_config(config, "lori_r1x8")       # DistillConfig never sees them
    assert student_config(config, "lori_r1x8") == student_config(config, "lori")
    for ranks, tag in [({"rank_layer": 1, "rank_hidden": 8}, "rl1-rh8"), ({"rank_hidden": 4}, "rh4"),
                       ({"rank_layer": 12}, "rl12"), ({}, "")]:
        assert lowrank_tag(ranks) == tag
        if tag:
            assert parse_lowrank_tag(tag) == ranks
    for bad in ("", "r1x8", "rl0", "rh8-rl1"):
        with pytest.raises(ValueError, match="not a factor-rank tag"):
            parse_lowrank_tag(bad)


def test_matched_variant_reads_same_seed_students():
    config = config_with(seeds=[0, 1], sweep={"m": {"method": "no_cot", "match_compute": {"to": "lori"}}})
    assert matched_inputs(config, "m") == {"ref": "lori", "base": "no_cot", "by": "flops"}
    assert matched_inputs(config, "m-seed1") == {"ref": "lori-seed1", "base": "no_cot-seed1", "by": "flops"}
    assert matched_inputs(config, "lori") is None


@pytest.mark.parametrize("changes, message", [
    ({"sweep": {"lori": {"method": "lori"}}}, "already a method"),
    ({"sweep": {"x": {"method": "lori", "w_covv": 0}}}, "w_covv"),
    ({"sweep": {"x": {"w_cov": 0}}}, "'method' is a required property"),
    ({"sweep": {"Bad-Name": {"method": "lori"}}}, "Bad-Name"),
    ({"sweep": {"m": {"method": "no_cot", "match_compute": {"to": "nope"}}}}, "'nope' is not another student"),
    ({"sweep": {"m": {"method": "no_cot", "match_compute": {"to": "lori"}, "batch_size": 8}}}, "takes only method"),
    ({"sweep": {"m": {"method": "codi", "match_compute": {"to": "lori"}}}}, "needs 'codi' itself in methods"),
    ({"sweep": {"r": {"method": "no_cot", "rank_layer": 1}}}, "rank_layer change LoRi's factors"),
    ({"sweep": {"r": {"method": "lori", "rank_hidden": 0}}}, "rank_hidden"),
    ({"seeds": [1, 1]}, "repeated seed"),
    ({"sweep": {"x": {"method": "lori", "seeds": [2, 2]}}}, "distinct seeds"),
    ({"seeds": []}, "seeds"),
])
def test_bad_sweeps_are_refused(changes, message):
    config = copy.deepcopy(load_config(DEFAULT_CONFIG))
    config.update(changes)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(config)


def write_metrics(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cost_per_step_weights_log_windows(tmp_path):
    # windows of 10 and 30 steps: mean FLOPs per step = (10*100 + 30*200) / 40
    m = write_metrics(tmp_path / "m.jsonl", [{"step": 10, "flops": 100.0, "sec_per_step": 0.5},
                                              {"step": 40, "flops": 200.0, "sec_per_step": 0.25}])
    assert cost_per_step(m, "flops") == (40, pytest.approx(175.0))
    assert cost_per_step(m, "wall") == (40, 0.25)


def test_matched_steps_equalise_total_compute(tmp_path):
    ref = write_metrics(tmp_path / "ref.jsonl", [{"step": 1000, "flops": 3.0e9, "sec_per_step": 0.3}])
    base = write_metrics(tmp_path / "base.jsonl", [{"step": 1000, "flops": 1.2e9, "sec_per_step": 0.15}])
    steps, info = matched_steps(ref, base, "flops")
    assert steps == 2500 and info["ref_cost_per_step"] == 3.0e9
    assert steps * 1.2e9 == pytest.approx(1000 * 3.0e9)
    assert matched_steps(ref, base, "wall")[0] == 2000


def test_unusable_metrics_are_clear_errors(tmp_path):
    old = write_metrics(tmp_path / "old.jsonl", [{"step": 5, "sec_per_step": 0.1}])
    with pytest.raises(ValueError, match="without 'flops'"):
        cost_per_step(old, "flops")
    with pytest.raises(ValueError, match="no training metrics"):
        cost_per_step(write_metrics(tmp_path / "empty.jsonl", []), "wall")
    with pytest.raises(ValueError, match="cannot read"):
        cost_per_step(tmp_path / "missing.jsonl", "wall")
    with pytest.raises(ValueError, match="flops | wall"):
        cost_per_step(old, "time")


def dry_run(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    """``snakemake -n -p`` of the workflow on ``config`` (printing every shell command); must succeed."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory",
                          str(tmp_path), "--cores", "1", "-n", "-p", "--configfile", str(cfg)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_dry_run_plans_seeds_variants_and_matched_students(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(run="sweep", seeds=[0, 1],
                  sweep={"lori_no_cov": {"method": "lori", "w_cov": 0.0},
                         "no_cot_matched": {"method": "no_cot", "match_compute": {"to": "lori", "by": "wall"}}})
    res = dry_run(tmp_path, config)
    distills = [l for l in res.stdout.splitlines() if "-m lori.distill " in l]
    outs = sorted(re.search(r"--out results/sweep/students/(\S+)", l)[1] for l in distills)
    assert outs == sorted(["no_cot", "no_cot-seed1", "lori", "lori-seed1", "lori_no_cov", "lori_no_cov-seed1",
                           "no_cot_matched", "no_cot_matched-seed1"])
    by_out = {re.search(r"--out results/sweep/students/(\S+)", l)[1]: l for l in distills}
    assert "--seed 1 " in by_out["lori-seed1"] and "--seed 0 " in by_out["lori"]
    assert "--w-cov 0.0" in by_out["lori_no_cov-seed1"]
    assert ("--match-ref results/sweep/students/lori-seed1_metrics.jsonl --match-base "
            "results/sweep/students/no_cot-seed1_metrics.jsonl --match-by wall") in by_out["no_cot_matched-seed1"]
    evals = [l for l in res.stdout.splitlines() if "-m lori.evaluate " in l]
    assert len(evals) == (1 + 8) * 2          # cot_sft + 8 students, on test and longer


def test_dry_run_gives_a_rank_variant_its_own_factors_and_targets(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(run="ranks", sweep={"lori_r1x8": {"method": "lori", "rank_layer": 1, "rank_hidden": 8}})
    res = dry_run(tmp_path, config)
    lines = res.stdout.splitlines()
    factorize = [l for l in lines if "-m lori.factorize " in l]
    assert len(factorize) == 2                 # the run's factors and the variant's
    ranked = next(l for l in factorize if "factors-rl1-rh8.zarr" in l)
    assert "--rank-layer 1" in ranked and "--rank-hidden 8" in ranked
    plain = next(l for l in factorize if "lowrank/factors.zarr" in l)
    assert f"--rank-layer {config['factorize']['rank_layer']}" in plain
    targets = [l for l in lines if "-m lori.targets " in l]
    assert any("--factors results/ranks/lowrank/factors-rl1-rh8.zarr --out results/ranks/targets/train-rl1-rh8.zarr"
               in l for l in targets)
    variant = next(l for l in lines if "-m lori.distill " in l and "students/lori_r1x8 " in l)
    assert "--targets results/ranks/targets/train-rl1-rh8.zarr --factors results/ranks/lowrank/factors-rl1-rh8.zarr" in variant
    assert "--rank-layer" not in variant
    plain_lori = next(l for l in lines if "-m lori.distill " in l and "students/lori " in l)
    assert "--targets results/ranks/targets/train.zarr" in plain_lori
