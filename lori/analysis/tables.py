"""The report's comparison tables: methods over seeds, training cost, thought-shuffle, ablations.

Plain functions from evaluation summaries (``eval/<student>/<bench>.json``) and training
metrics (``students/<student>_metrics.jsonl``) to ``(header, rows)``; :mod:`lori.report`
renders them. Students named ``<variant>-seed<k>`` (:mod:`lori.sweep`) are grouped by variant:
accuracy is the mean over seeds ± the sample standard deviation, and the 95% CI is Wilson's
on all seeds' problems pooled.
"""
from __future__ import annotations

import statistics
from collections import defaultdict

from lori.evaluate import wilson_interval
from lori.sweep import split_student, total_flops

Table = tuple[list[str], list[list[str]]]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return _pct(values[0])
    return f"{_pct(statistics.mean(values))} ± {_pct(statistics.stdev(values))}"


def group_by_variant(summaries: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(variant, bench) -> the summaries of its seeds, in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in summaries:
        groups[(split_student(s["method"])[0], s["bench"])].append(s)
    return dict(groups)


def training_cost(metrics: list[dict]) -> dict:
    """Steps, wall seconds and FLOPs of one training run from its metrics rows."""
    if not metrics:
        return {}
    steps = int(metrics[-1]["step"])
    cost = {"steps": steps, "wall_s": steps * float(metrics[-1].get("sec_per_step", float("nan")))}
    if all("flops" in r for r in metrics):
        cost["flops"] = total_flops(metrics)
    return cost


#: row order of the paper-style table: the explicit-CoT teacher, No-CoT, the baselines, then LoRi
METHOD_ORDER = ("cot_sft", "no_cot", "icot_si", "coconut", "codi", "lori")


def paper_table(summaries: list[dict], bench_order: tuple[str, ...] = ()) -> Table:
    """Method x benchmark, as the papers print it: accuracy mean ± sd over seeds [pooled Wilson 95% CI]
    per benchmark, then generated tokens and latency averaged over the benchmarks.

    Benchmarks in ``bench_order`` come first (in that order), any others after in first-seen order;
    methods follow :data:`METHOD_ORDER`, sweep variants after them in first-seen order.
    """
    groups = group_by_variant(summaries)
    seen_benches = list(dict.fromkeys(b for _, b in groups))
    benches = [b for b in bench_order if b in seen_benches] + [b for b in seen_benches if b not in bench_order]
    first_seen = {v: i for i, v in enumerate(dict.fromkeys(v for v, _ in groups))}
    variants = sorted(first_seen, key=lambda v: (METHOD_ORDER.index(v) if v in METHOD_ORDER else len(METHOD_ORDER),
                                                 first_seen[v]))
    header = ["method", "seeds", *(f"{b} % (95% CI)" for b in benches), "generated tokens", "ms / problem"]
    rows = []
    for variant in variants:
        cells, tokens, latency, seeds = [], [], [], 0
        for bench in benches:
            group = groups.get((variant, bench))
            if not group:
                cells.append("—")
                continue
            lo, hi = wilson_interval(sum(s["correct"] for s in group), sum(s["n"] for s in group))
            cells.append(f"{_mean_sd([s['accuracy'] for s in group])} [{_pct(lo)}, {_pct(hi)}]")
            tokens += [s["generated_tokens"] for s in group]
            latency += [s["latency_s"] for s in group]
            seeds = max(seeds, len(group))
        rows.append([variant, str(seeds), *cells, f"{statistics.mean(tokens):.1f}",
                     f"{1000 * statistics.mean(latency):.2f}"])
    return header, rows


def methods_table(summaries: list[dict], metrics: dict[str, list[dict]]) -> Table:
    """One row per variant and benchmark, seeds aggregated, with cost and thought reliance."""
    header = ["method", "benchmark", "seeds", "accuracy %", "95% CI (pooled)", "shuffled thoughts %",
              "generated tokens", "ms / problem", "train steps", "train wall s", "train PFLOPs"]
    rows = []
    groups = group_by_variant(summaries)
    for (variant, bench), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        correct, total = sum(s["correct"] for s in group), sum(s["n"] for s in group)
        lo, hi = wilson_interval(correct, total)
        shuffled = [s["thought_shuffle"]["accuracy"] for s in group if "thought_shuffle" in s]
        # cot_sft is the teacher: its training metrics are teacher_metrics.jsonl
        costs = [training_cost(metrics.get("teacher" if s["method"] == "cot_sft" else s["method"], [])) for s in group]
        costs = [c for c in costs if c]

        def cost_cell(key: str, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
            values = [c[key] for c in costs if key in c]
            return fmt.format(statistics.mean(values) / scale) if values else "—"

        rows.append([variant, bench, str(len(group)), _mean_sd([s["accuracy"] for s in group]),
                     f"[{_pct(lo)}, {_pct(hi)}]",
                     (f"{_mean_sd(shuffled)} (drop {_pct(statistics.mean(s['thought_shuffle']['drop'] for s in group))})"
                      if len(shuffled) == len(group) else "—"),
                     f"{statistics.mean(s['generated_tokens'] for s in group):.1f}",
                     f"{1000 * statistics.mean(s['latency_s'] for s in group):.2f}",
                     cost_cell("steps"), cost_cell("wall_s"), cost_cell("flops", 1e15, "{:.3g}")])
    return header, rows


def ablation_table(summaries: list[dict], sweep: dict[str, dict]) -> Table:
    """Each sweep variant against the plain run of its method: accuracy and the difference."""
    header = ["variant", "method", "changes", "benchmark", "accuracy %", "method accuracy %", "Δ points"]
    groups = group_by_variant(summaries)
    rows = []
    for name, spec in sweep.items():
        method = spec["method"]
        changes = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "method") or "—"
        for (variant, bench), group in sorted(groups.items(), key=lambda kv: kv[0][1]):
            if variant != name:
                continue
            base = groups.get((method, bench), [])
            acc = statistics.mean(s["accuracy"] for s in group)
            base_acc = statistics.mean(s["accuracy"] for s in base) if base else None
            rows.append([name, method, changes.replace("'", ""), bench, _mean_sd([s["accuracy"] for s in group]),
                         _mean_sd([s["accuracy"] for s in base]) if base else "—",
                         f"{100 * (acc - base_acc):+.1f}" if base_acc is not None else "—"])
    return header, rows
