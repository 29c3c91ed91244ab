"""The report's tables (lori.analysis.tables): one results table (seeds grouped, pooled CIs, tokens per
benchmark, cost), ablations, published numbers."""
from __future__ import annotations

import pytest

from lori.analysis.stats import wilson_interval
from lori.analysis.tables import ablation_table, results_table, steps_table, training_cost


def summary(student: str, bench: str, correct: int, n: int = 100, shuffled: int | None = None,
            tokens: float = 3.0, latent: int = 0) -> dict:
    s = {"method": student, "bench": bench, "n": n, "correct": correct, "accuracy": correct / n,
         "generated_tokens": tokens, "latent_steps": latent, "latency_s": 0.002}
    if shuffled is not None:
        s["thought_shuffle"] = {"accuracy": shuffled / n, "drop": (correct - shuffled) / n}
    return s


def test_seeds_are_grouped_with_mean_sd_and_pooled_ci():
    summaries = [summary("lori", "test", 20, shuffled=10), summary("lori-seed1", "test", 30, shuffled=14),
                 summary("lori-seed2", "test", 25, shuffled=12), summary("no_cot", "test", 9)]
    header, rows = results_table(summaries, {})
    by = {r[1]: dict(zip(header, r)) for r in rows}
    assert set(by) == {"lori", "no_cot"}
    assert by["lori"]["seeds"] == "3" and by["lori"]["n"] == "100"
    assert by["lori"]["accuracy %"] == "25.0 ± 5.0"          # mean 25, sample sd 5
    lo, hi = wilson_interval(75, 300)
    assert by["lori"]["95% CI (pooled)"] == f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    assert by["lori"]["shuffled-thought drop (points)"] == "13.0 ± 3.0"    # drops 10, 16, 13
    assert by["no_cot"]["accuracy %"] == "9.0" and by["no_cot"]["shuffled-thought drop (points)"] == "—"
    assert by["no_cot"]["train steps"] == "—"


def test_one_row_per_method_and_benchmark_with_its_own_tokens():
    summaries = [summary("lori", "svamp", 30, tokens=4.0, latent=6), summary("lori", "gsm8k", 20, tokens=2.0, latent=6),
                 summary("lori-seed1", "gsm8k", 30, tokens=3.0, latent=6), summary("codi", "gsm8k", 10),
                 summary("cot_sft", "gsm8k", 50, tokens=40.0), summary("cot_sft", "svamp", 60, tokens=25.0),
                 summary("lori_k3", "gsm8k", 5), summary("cot_sft", "extra", 1)]
    header, rows = results_table(summaries, {}, bench_order=("gsm8k", "gsm_hard", "svamp"))
    # benchmarks in the papers' order, methods in theirs within each, variants last
    assert [(r[0], r[1]) for r in rows] == [("gsm8k", "cot_sft"), ("gsm8k", "codi"), ("gsm8k", "lori"),
                                            ("gsm8k", "lori_k3"), ("svamp", "cot_sft"), ("svamp", "lori"),
                                            ("extra", "cot_sft")]
    by = {(r[0], r[1]): dict(zip(header, r)) for r in rows}
    # tokens are the benchmark's own, never averaged over benchmarks
    assert by[("gsm8k", "cot_sft")]["generated tokens"] == "40.0" and by[("svamp", "cot_sft")]["generated tokens"] == "25.0"
    assert by[("gsm8k", "lori")]["generated tokens"] == "2.5" and by[("svamp", "lori")]["generated tokens"] == "4.0"
    assert by[("gsm8k", "lori")]["latent steps"] == "6" and by[("gsm8k", "codi")]["latent steps"] == "0"
    lo, hi = wilson_interval(50, 200)
    assert by[("gsm8k", "lori")]["accuracy %"] == "25.0 ± 7.1"
    assert by[("gsm8k", "lori")]["95% CI (pooled)"] == f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    assert by[("gsm8k", "lori")]["seeds"] == "2" and by[("svamp", "lori")]["seeds"] == "1"
    assert by[("gsm8k", "cot_sft")]["ms / problem"] == "2.00"


def test_training_cost_sums_flops_over_log_windows():
    rows = [{"step": 50, "flops": 2.0, "sec_per_step": 0.2}, {"step": 100, "flops": 4.0, "sec_per_step": 0.3}]
    assert training_cost(rows) == {"steps": 100, "wall_s": pytest.approx(30.0), "flops": pytest.approx(300.0)}
    assert "flops" not in training_cost([{"step": 10, "sec_per_step": 1.0}])
    assert training_cost([{"step": 3}]) == {"steps": 3}           # no speed logged: no wall time, not NaN
    assert training_cost([]) == {}


def test_cost_columns_average_over_seeds():
    metrics = {"lori": [{"step": 10, "flops": 1e15, "sec_per_step": 1.0}],
               "lori-seed1": [{"step": 10, "flops": 3e15, "sec_per_step": 2.0}]}
    header, rows = results_table([summary("lori", "t", 1), summary("lori-seed1", "t", 2)], metrics)
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


def test_published_table_cites_every_number():
    from lori.analysis.published import PUBLISHED, published_table
    header, rows = published_table()
    assert header[:2] == ["base model", "method"] and header[-1] == "source"
    assert len(rows) == len(PUBLISHED)
    codi_gpt2 = next(r for r in rows if r[0] == "GPT-2 small" and r[1] == "codi")
    assert codi_gpt2[2:5] == ["43.7", "9.9", "42.9"]
    assert all(r[-1] for r in rows)


def test_accuracy_by_steps_pools_seeds_per_step_count():
    rows = {("lori", "test"): [(2, True), (2, False), (3, True), (4, False)],
            ("lori-seed1", "test"): [(2, True), (2, True), (3, False), (4, False)],
            ("no_cot", "test"): [(2, True), (2, False), (3, False), (4, False)],
            ("codi", "test"): [(2, True)],
            ("lori", "longer"): [(5, True), (5, False)]}          # one step count only: nothing to split
    header, table = steps_table(rows, bench_order=("test",))
    assert header == ["benchmark", "method", "2 steps", "3 steps", "4 steps"]      # not longer's 5: not split
    by = {(r[0], r[1]): dict(zip(header, r)) for r in table}
    assert set(by) == {("test", "no_cot"), ("test", "codi"), ("test", "lori")}
    assert by[("test", "codi")]["2 steps"] == "100.0 (1)" and by[("test", "codi")]["3 steps"] == "—"
    assert by[("test", "lori")]["2 steps"] == "75.0 (4)"          # 3 of the 4 pooled two-step problems
    assert by[("test", "lori")]["3 steps"] == "50.0 (2)" and by[("test", "lori")]["4 steps"] == "0.0 (2)"
    assert by[("test", "no_cot")]["2 steps"] == "50.0 (2)" and by[("test", "no_cot")]["4 steps"] == "0.0 (1)"
    assert [r[1] for r in table] == ["no_cot", "codi", "lori"]    # the report's method order
    assert steps_table({("lori", "longer"): [(5, True)], ("no_cot", "svamp"): [(0, False)]}) is None


def test_attribution_table_puts_each_cell_s_seeds_where_the_layout_says():
    from lori.analysis.tables import attribution_table

    summaries = [summary("lori", "test", 20), summary("lori-seed1", "test", 30), summary("lori_steps", "test", 95),
                 summary("coconut", "test", 15), summary("sim_cot", "test", 40), summary("pause", "test", 12),
                 summary("lori", "longer", 5)]
    layout = {"columns": ["none", "step anchors (core)", "SIM-CoT decoder"],
              "rows": [["LoRi", "lori", "lori_steps"],                          # a short row: the rest empty
                       ["Coconut", "coconut", "not run", "sim_cot"],
                       ["pause", "pause", "pause_steps", "nothing is fed back to decode"],
                       ["No-CoT", "—", "—"]]}
    header, rows = attribution_table(summaries, layout, "test")
    assert header == ["method", "none", "step anchors (core)", "SIM-CoT decoder"]
    by = {r[0]: dict(zip(header, r)) for r in rows}
    lo, hi = wilson_interval(50, 200)
    assert by["LoRi"]["none"] == f"25.0 ± 7.1 [{100 * lo:.1f}, {100 * hi:.1f}] (2) `lori`"
    assert by["LoRi"]["step anchors (core)"].startswith("95.0 [") and by["LoRi"]["SIM-CoT decoder"] == "—"
    assert by["Coconut"]["step anchors (core)"] == "— (not run)" and by["Coconut"]["SIM-CoT decoder"].startswith("40.0")
    assert by["pause"]["SIM-CoT decoder"] == "— (nothing is fed back to decode)"
    assert [r[0] for r in rows] == ["LoRi", "Coconut", "pause", "No-CoT"]        # the author's order
    assert rows[3][1:] == ["—", "—", "—"]                                        # a bare dash stays one
    # a benchmark none of the cells' students was evaluated on: no table
    assert attribution_table(summaries, layout, "svamp") is None
    header, rows = attribution_table(summaries, layout, "longer")
    assert rows[0][1].startswith("5.0 [") and rows[1][1] == "—"                 # coconut: not evaluated there
    assert rows[2][2] == "— (pause_steps)"     # named but never evaluated: shown as text (a typo shows)
