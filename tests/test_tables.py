"""The report's comparison tables (lori.tables): seeds grouped, pooled CIs, cost, ablations."""
from __future__ import annotations

import pytest

from lori.evaluate import wilson_interval
from lori.tables import ablation_table, methods_table, training_cost


def summary(student: str, bench: str, correct: int, n: int = 100, shuffled: int | None = None) -> dict:
    s = {"method": student, "bench": bench, "n": n, "correct": correct, "accuracy": correct / n,
         "generated_tokens": 3.0, "latency_s": 0.002}
    if shuffled is not None:
        s["thought_shuffle"] = {"accuracy": shuffled / n, "drop": (correct - shuffled) / n}
    return s


def test_seeds_are_grouped_with_mean_sd_and_pooled_ci():
    summaries = [summary("lori", "test", 20, shuffled=10), summary("lori-seed1", "test", 30, shuffled=14),
                 summary("lori-seed2", "test", 25, shuffled=12), summary("no_cot", "test", 9)]
    header, rows = methods_table(summaries, {})
    by = {r[0]: dict(zip(header, r)) for r in rows}
    assert set(by) == {"lori", "no_cot"}
    assert by["lori"]["seeds"] == "3"
    assert by["lori"]["accuracy %"] == "25.0 ± 5.0"          # mean 25, sample sd 5
    lo, hi = wilson_interval(75, 300)
    assert by["lori"]["95% CI (pooled)"] == f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    assert by["lori"]["shuffled thoughts %"] == "12.0 ± 2.0 (drop 13.0)"
    assert by["no_cot"]["accuracy %"] == "9.0" and by["no_cot"]["shuffled thoughts %"] == "—"
    assert by["no_cot"]["train steps"] == "—"


def test_training_cost_sums_flops_over_log_windows():
    rows = [{"step": 50, "flops": 2.0, "sec_per_step": 0.2}, {"step": 100, "flops": 4.0, "sec_per_step": 0.3}]
    assert training_cost(rows) == {"steps": 100, "wall_s": pytest.approx(30.0), "flops": pytest.approx(300.0)}
    assert "flops" not in training_cost([{"step": 10, "sec_per_step": 1.0}])
    assert training_cost([]) == {}


def test_cost_columns_average_over_seeds():
    metrics = {"lori": [{"step": 10, "flops": 1e15, "sec_per_step": 1.0}],
               "lori-seed1": [{"step": 10, "flops": 3e15, "sec_per_step": 2.0}]}
    header, rows = methods_table([summary("lori", "t", 1), summary("lori-seed1", "t", 2)], metrics)
    row = dict(zip(header, rows[0]))
    assert row["train steps"] == "10" and row["train wall s"] == "15" and row["train PFLOPs"] == "20"


def test_ablation_rows_compare_to_the_plain_method():
    summaries = [summary("lori", "test", 20), summary("lori-seed1", "test", 30),
                 summary("lori_no_cov", "test", 15), summary("lori_no_cov-seed1", "test", 21),
                 summary("lori_k3", "test", 40)]
    sweep = {"lori_no_cov": {"method": "lori", "w_cov": 0.0}, "lori_k3": {"method": "lori", "latent_steps": 3},
             "ghost": {"method": "lori"}}
    header, rows = ablation_table(summaries, sweep)
    by = {r[0]: dict(zip(header, r)) for r in rows}
    assert set(by) == {"lori_no_cov", "lori_k3"}               # a variant without results has no row
    assert by["lori_no_cov"]["changes"] == "w_cov=0.0" and by["lori_no_cov"]["Δ points"] == "-7.0"
    assert by["lori_no_cov"]["method accuracy %"] == "25.0 ± 7.1"
    assert by["lori_k3"]["Δ points"] == "+15.0"
