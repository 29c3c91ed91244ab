"""lori.analysis.stats against scipy and hand counts; the evaluation store's contract (lori.artifacts.evaluation)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lori.analysis.stats import agreement, conditional_agreement, mcnemar_p, wilson_interval
from lori.analysis.tables import agreement_table
from lori.artifacts import evaluation
from lori.artifacts.store import ArtifactError

ROOT = Path(__file__).resolve().parents[1]


def test_wilson_interval_by_formula():
    # the textbook Wilson score interval, (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), written out
    z = 1.959963984540054
    for k, n in [(0, 10), (3, 10), (8, 10), (10, 10), (75, 300), (1, 1000)]:
        p, d = k / n, 1 + z * z / n
        centre, half = (p + z * z / (2 * n)) / d, z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / d
        assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775328), abs=1e-7)   # the rule of three's cousin


def test_mcnemar_is_the_exact_binomial_test():
    from math import comb

    for a in range(0, 30, 3):
        for b in range(0, 30, 4):
            n, k = a + b, min(a, b)   # both binomial tails of the discordant split, in exact integers
            want = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
            assert mcnemar_p(a, b) == pytest.approx(want, rel=1e-9)
            assert mcnemar_p(a, b) == mcnemar_p(b, a)
    assert mcnemar_p(0, 5) == 2 / 32                      # by hand: both tails of 1/2**5


def test_conditional_agreement_by_hand():
    rows = {("x", "t"): {"1": True, "2": True, "3": False, "4": True},
            ("y", "t"): {"1": True, "2": False, "3": True, "4": False},
            ("z", "t"): {"1": False, "2": False, "3": False, "4": False}}
    methods, mat = conditional_agreement(rows, "t")
    assert methods == ["x", "y", "z"]
    np.testing.assert_allclose(np.diag(mat), [75.0, 50.0, 0.0])
    assert mat[0, 1] == pytest.approx(100 / 3) and mat[1, 0] == 50.0 and mat[0, 2] == 0.0
    assert np.isnan(mat[2, 0]) and np.isnan(mat[2, 1])     # z has no right answers to condition on
    header, table = agreement_table(agreement(rows))
    assert header[-1] == "McNemar p" and table[0] == ["t", "x", "y", "4", "1", "2", "1", "0", "25.0", "1"]


# ---------------------------------------------------------------- the evaluation store
def row(i: int, correct: bool) -> dict:
    return {"id": f"test-{i}", "prediction": "#### 4", "parsed": "4", "gold": "4", "correct": correct,
            "generated_tokens": 3, "latent_steps": 2, "latency_s": 0.01}


def test_rows_and_summary_round_trip(tmp_path):
    rows = [row(0, True), row(1, False)]
    path = tmp_path / "eval" / "lori" / "test.jsonl"
    evaluation.write_rows(path, rows)
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows)   # the layout evaluate always wrote
    assert evaluation.read_rows(path) == rows
    summary = {k: 0 for k in evaluation.SUMMARY_KEYS}
    evaluation.write_summary(evaluation.summary_path(path), summary)
    assert evaluation.read_summary(tmp_path / "eval" / "lori" / "test.json") == summary
    assert evaluation.rows_path(evaluation.summary_path(path)) == path


def test_bad_evaluation_files_are_named(tmp_path):
    good = "".join(json.dumps(row(i, True)) + "\n" for i in range(2))
    cases = {"truncated.jsonl": (good + '{"id": "test-2", "predic', ":3: not valid JSON"),
             "foreign.jsonl": ('{"id": "a", "correct": true}\n', ":1: not an evaluation row (missing prediction"),
             "list.jsonl": ("[1, 2]\n", ":1: not an evaluation row")}
    for name, (text, fragment) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ArtifactError, match=re.escape(fragment)):
            evaluation.read_rows(tmp_path / name)
    with pytest.raises(ArtifactError, match="evaluation rows are missing"):
        evaluation.read_rows(tmp_path / "nowhere.jsonl")
    (tmp_path / "s.json").write_text(json.dumps({"method": "lori", "bench": "test"}))
    with pytest.raises(ArtifactError, match="not an evaluation summary .missing n, correct"):
        evaluation.read_summary(tmp_path / "s.json")
    (tmp_path / "half.json").write_text('{"method": "lo')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        evaluation.read_summary(tmp_path / "half.json")


def test_docs_list_the_store_fields():
    table = (ROOT / "docs" / "artifacts.md").read_text()
    rows_line = next(l for l in table.splitlines() if l.startswith("| `eval/<m>/<b>.jsonl`"))
    summary_line = next(l for l in table.splitlines() if l.startswith("| `eval/<m>/<b>.json`"))
    names = lambda line: re.findall(r"`([a-z_]+)`", line.split("|")[2])  # noqa: E731
    assert tuple(names(rows_line)) == evaluation.ROW_FIELDS + evaluation.OPTIONAL_ROW_FIELDS
    assert set(names(summary_line)) == {*evaluation.SUMMARY_KEYS, "wall_s", "config_hash", "lori_version"}


def test_analysis_reads_without_torch():
    code = ("import sys, lori.analysis.stats, lori.analysis.tables, lori.analysis.runs, lori.analysis.render, "
            "lori.analysis.figures, lori.compare; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
