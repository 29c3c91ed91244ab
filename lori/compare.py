"""``lori compare RUN_A RUN_B``: what changed between two runs, per method and benchmark.

Reads ``eval/<method>/<bench>.json`` (summaries) of both runs and prints one row per
(method, benchmark): accuracy of A and B with their Wilson 95% CIs, the difference B - A in
points, generated tokens and latency of each. When both runs scored the same problems (same
ids in ``eval/<method>/<bench>.jsonl``), the difference gets a paired exact McNemar p-value;
otherwise the intervals are all there is. Rows only one run has are listed with a dash.

Examples::

    lori compare quickstart quickstart-long              # two runs under results/
    lori compare results/a /elsewhere/results/b --format csv > diff.csv
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Sequence

from lori.analysis.render import md_table
from lori.analysis.runs import load_rows, run_dir, summary_paths
from lori.analysis.stats import mcnemar_p
from lori.artifacts.evaluation import read_summary
from lori.cli import USER_ERRORS


def summaries(run: Path) -> dict[tuple[str, str], dict]:
    """``(method, bench) -> summary`` of one run (with its per-problem rows under ``rows`` when present)."""
    paths = summary_paths(run)
    rows = load_rows(paths)
    out = {}
    for p in paths:
        s = read_summary(p)
        out[(s["method"], s["bench"])] = {**s, "rows": rows.get((s["method"], s["bench"]))}
    return out


def paired_p(a: dict[str, bool] | None, b: dict[str, bool] | None) -> float | None:
    """McNemar p on the problems both runs scored, if they are the same problems (else None)."""
    if not a or not b or set(a) != set(b):
        return None
    return mcnemar_p(sum(a[k] and not b[k] for k in a), sum(b[k] and not a[k] for k in a))


def compare(run_a: Path, run_b: Path) -> list[dict]:
    """One dict per (method, bench) in either run; values of a run that lacks the row are None."""
    sa, sb = summaries(run_a), summaries(run_b)
    out = []
    for key in sorted(set(sa) | set(sb), key=lambda k: (k[1], k[0])):
        a, b = sa.get(key), sb.get(key)
        row = {"method": key[0], "bench": key[1]}
        for tag, s in (("a", a), ("b", b)):
            row.update({f"{k}_{tag}": (s[k] if s else None) for k in ("accuracy", "ci_low", "ci_high", "n",
                                                                       "generated_tokens", "latency_s")})
        both = a is not None and b is not None
        row["delta_pp"] = 100 * (b["accuracy"] - a["accuracy"]) if both else None
        row["delta_tokens"] = b["generated_tokens"] - a["generated_tokens"] if both else None
        row["p_paired"] = paired_p(a["rows"], b["rows"]) if both else None
        out.append(row)
    return out


def _acc(r: dict, tag: str) -> str:
    if r[f"accuracy_{tag}"] is None:
        return "-"
    return f"{100 * r[f'accuracy_{tag}']:.1f} [{100 * r[f'ci_low_{tag}']:.1f}, {100 * r[f'ci_high_{tag}']:.1f}]"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "benchmark", "accuracy A % [CI]", "accuracy B % [CI]", "B - A (pp)", "paired p",
              "tokens A", "tokens B", "ms A", "ms B"]
    return header, [[r["method"], r["bench"], _acc(r, "a"), _acc(r, "b"), _num(r["delta_pp"], "+.1f"),
                     _num(r["p_paired"], ".3g"), _num(r["generated_tokens_a"], ".1f"),
                     _num(r["generated_tokens_b"], ".1f"),
                     _num(None if r["latency_s_a"] is None else 1000 * r["latency_s_a"], ".2f"),
                     _num(None if r["latency_s_b"] is None else 1000 * r["latency_s_b"], ".2f")] for r in rows]


def render(rows: list[dict], fmt: str, name_a: str, name_b: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1)
    header, body = table(rows)
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header, *body])
        return buf.getvalue().rstrip("\n")
    return f"A = {name_a}, B = {name_b}\n\n" + md_table(header, body)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="lori compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a", help="baseline run: a name under --results or a path to a run directory")
    ap.add_argument("run_b", help="the run to compare with it (differences are B - A)")
    ap.add_argument("--results", default="results", help="folder holding the runs (default: results)")
    ap.add_argument("--format", choices=("md", "csv", "json"), default="md", help="output format (default: md table)")
    args = ap.parse_args(argv)
    try:
        a, b = run_dir(args.run_a, args.results), run_dir(args.run_b, args.results)
        print(render(compare(a, b), args.format, str(a), str(b)))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
