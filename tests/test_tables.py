"""The report's comparison tables (lori.analysis.tables): seeds grouped, pooled CIs, cost, ablations."""
from __future__ import annotations

import pytest

from lori.analysis.stats import wilson_interval
from lori.analysis.tables import ablation_table, methods_table, paper_table, training_cost


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


def test_paper_table_is_method_by_benchmark_in_paper_order():
    summaries = [summary("lori", "svamp", 30), summary("lori", "gsm8k", 20), summary("lori-seed1", "gsm8k", 30),
                 summary("codi", "gsm8k", 10), summary("cot_sft", "gsm8k", 50), summary("cot_sft", "svamp", 60),
                 summary("lori_k3", "gsm8k", 5), summary("cot_sft", "extra", 1)]
    header, rows = paper_table(summaries, bench_order=("gsm8k", "gsm_hard", "svamp"))
    assert header == ["method", "seeds", "gsm8k % (95% CI)", "svamp % (95% CI)", "extra % (95% CI)",
                      "generated tokens", "ms / problem"]
    assert [r[0] for r in rows] == ["cot_sft", "codi", "lori", "lori_k3"]   # paper order, then variants
    by = {r[0]: dict(zip(header, r)) for r in rows}
    lo, hi = wilson_interval(50, 200)
    assert by["lori"]["gsm8k % (95% CI)"] == f"25.0 ± 7.1 [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert by["lori"]["seeds"] == "2" and by["lori"]["extra % (95% CI)"] == "—"
    assert by["codi"]["svamp % (95% CI)"] == "—" and by["codi"]["seeds"] == "1"
    assert by["cot_sft"]["generated tokens"] == "3.0" and by["cot_sft"]["ms / problem"] == "2.00"


def test_published_table_cites_every_number():
    from lori.analysis.published import PUBLISHED, published_table
    header, rows = published_table()
    assert header[:2] == ["base model", "method"] and header[-1] == "source"
    assert len(rows) == len(PUBLISHED)
    codi_gpt2 = next(r for r in rows if r[0] == "GPT-2 small" and r[1] == "codi")
    assert codi_gpt2[2:5] == ["43.7", "9.9", "42.9"]
    assert all(r[-1] for r in rows)
