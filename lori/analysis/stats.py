"""Statistics of evaluation results: Wilson intervals, exact McNemar tests, per-problem agreement.

Plain functions on counts and on per-problem correctness maps ``(method, bench) -> {problem id:
correct}`` (:func:`lori.analysis.runs.load_rows` builds them); no I/O, no plotting.
"""
from __future__ import annotations

import math

import numpy as np

Correctness = dict[tuple[str, str], dict[str, bool]]    # (method, bench) -> {problem id: correct}


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for a binomial proportion."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: are the discordant problems split 50/50?

    The binomial tail summed in exact integers (equal to ``scipy.stats.binomtest(only_a,
    only_a + only_b).pvalue``, which the tests check) keeps scipy's import out of the report.
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


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
