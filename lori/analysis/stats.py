"""Statistics of evaluation results: Wilson intervals, exact McNemar tests, per-problem agreement.

Plain functions on counts and on per-problem correctness maps ``(method, bench) -> {problem id:
correct}`` (:func:`lori.analysis.runs.load_rows` builds them); no I/O, no plotting. The interval
and the test are scipy's (``binomtest``); this module only fixes the conventions (95%, two-sided,
empty counts).
"""
from __future__ import annotations

import numpy as np

# scipy is imported where a test or interval is computed: the report tools' `--help` (whose modules
# import this one) must not wait for it

Correctness = dict[tuple[str, str], dict[str, bool]]    # (method, bench) -> {problem id: correct}


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """Wilson score 95% interval for a binomial proportion ((0, 1) when there is nothing to count)."""
    if total == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: are the discordant problems split 50/50? (1 when there are none)"""
    n = only_a + only_b
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(only_a, n, 0.5).pvalue)


def agreement(rows: Correctness) -> list[dict]:
    """Every pair of methods on every benchmark: both right, only one, neither (paired on problem ids)."""
    out = []
    for bench in sorted({b for _, b in rows}):
        methods = sorted(m for m, b in rows if b == bench)
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                ra, rb = rows[(a, bench)], rows[(b, bench)]
                ids = sorted(set(ra) & set(rb))
                both = sum(ra[k] and rb[k] for k in ids)
                only_a = sum(ra[k] and not rb[k] for k in ids)
                only_b = sum(rb[k] and not ra[k] for k in ids)
                out.append({"bench": bench, "a": a, "b": b, "n": len(ids), "both": both, "only_a": only_a,
                            "only_b": only_b, "neither": len(ids) - both - only_a - only_b,
                            "agree": (len(ids) - only_a - only_b) / max(1, len(ids)), "p": mcnemar_p(only_a, only_b)})
    return out


def conditional_agreement(rows: Correctness, bench: str) -> tuple[list[str], np.ndarray]:
    """``(methods, M)`` on one benchmark: ``M[i, j]`` = % of method i's right answers method j also
    gets right (NaN when i has none); the diagonal is each method's accuracy."""
    methods = sorted(m for m, b in rows if b == bench)
    mat = np.full((len(methods), len(methods)), np.nan)
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            ra, rb = rows[(a, bench)], rows[(b, bench)]
            right = [k for k in ra if ra[k] and k in rb]
            if i == j:
                mat[i, j] = 100 * sum(ra.values()) / max(1, len(ra))
            elif right:
                mat[i, j] = 100 * sum(rb[k] for k in right) / len(right)
    return methods, mat
