"""The statistics of an evaluation: Wilson interval (lori.analysis.stats) and the summary row (lori.evaluate)."""
from __future__ import annotations

import pytest
from scipy.stats import norm

from lori.analysis.stats import wilson_interval
from lori.evaluate import summarize


def test_wilson_8_of_10():
    lo, hi = wilson_interval(8, 10)
    assert round(lo, 3) == 0.490 and round(hi, 3) == 0.943
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)


def test_wilson_extremes():
    z2 = norm.ppf(0.975) ** 2                                    # the exact z scipy uses
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and lo >= 0.0
    assert hi == pytest.approx(z2 / (10 + z2), rel=1e-9)       # 0.2775
    assert round(hi, 3) == 0.278
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(10 / (10 + z2), rel=1e-9)       # 0.7225
    assert hi == pytest.approx(1.0, abs=1e-12) and hi <= 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_symmetry_and_width():
    lo, hi = wilson_interval(3, 10)
    lo2, hi2 = wilson_interval(7, 10)
    assert lo == pytest.approx(1 - hi2, abs=1e-12) and hi == pytest.approx(1 - lo2, abs=1e-12)
    # more data, narrower interval around the same proportion
    lo_s, hi_s = wilson_interval(50, 100)
    a, b = wilson_interval(500, 1000)
    assert b - a < hi_s - lo_s
    assert (lo_s + hi_s) / 2 == pytest.approx(0.5) and (a + b) / 2 == pytest.approx(0.5)
    assert a < 0.5 < b


def test_summarize_hand_rows():
    rows = [
        {"correct": True, "generated_tokens": 10, "latent_steps": 6, "latency_s": 0.5},
        {"correct": False, "generated_tokens": 20, "latent_steps": 6, "latency_s": 1.5},
        {"correct": True, "generated_tokens": 30, "latent_steps": 6, "latency_s": 1.0},
        {"correct": True, "generated_tokens": 0, "latent_steps": 6, "latency_s": 1.0},
    ]
    s = summarize(rows, "lori", "test")
    lo, hi = wilson_interval(3, 4)
    assert s == {"method": "lori", "bench": "test", "n": 4, "correct": 3, "accuracy": 0.75,
                 "ci_low": lo, "ci_high": hi, "generated_tokens": 15.0, "latent_steps": 6.0, "latency_s": 1.0}
    assert 0.0 < s["ci_low"] < 0.75 < s["ci_high"] <= 1.0


def test_summarize_empty():
    s = summarize([], "cot_sft", "longer")
    assert s["n"] == 0 and s["correct"] == 0 and s["accuracy"] == 0.0
    assert (s["ci_low"], s["ci_high"]) == (0.0, 1.0)
    assert s["generated_tokens"] == 0.0 and s["latency_s"] == 0.0
