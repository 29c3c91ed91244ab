"""The report's tables: results per student, methods over seeds, training cost, thought-shuffle,
ablations, per-problem agreement.

Plain functions from evaluation summaries (``eval/<student>/<bench>.json``), training metrics
(``students/<student>_metrics.jsonl``) and agreement pairs (:func:`lori.analysis.stats.agreement`)
to ``(header, rows)`` of strings; :mod:`lori.analysis.render` renders them. Students named
``<variant>-seed<k>`` (:mod:`lori.sweep`) are grouped by variant: accuracy is the mean over
seeds ± the sample standard deviation, and the 95% CI is Wilson's on all seeds' problems pooled.
"""
from __future__ import annotations

import statistics
from collections import defaultdict

from lori.analysis.stats import wilson_interval
from lori.lowrank.maths import energy_curve
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


PAPER_NOTE = ("Accuracy: mean ± sample sd over seeds [Wilson 95% CI on all seeds' problems pooled]; "
              "tokens and latency averaged over the benchmarks.")


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


METHODS_NOTE = ("Accuracy: mean ± standard deviation over seeds (one seed: the value); the CI pools all seeds' "
                "problems. Shuffled thoughts: the same student answering with another problem's thoughts "
                "(drop = reliance on its own thoughts). Training cost per seed: optimizer steps, wall seconds, "
                "and 6 x parameters x positions FLOPs; the teacher (cot_sft) is counted under teacher training.")


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


def results_table(summaries: list[dict]) -> Table:
    """One row per evaluated student and benchmark, as the summaries have it."""
    header = ["method", "benchmark", "accuracy %", "95% CI", "n", "generated tokens", "latent steps", "ms / problem"]
    rows = []
    for s in sorted(summaries, key=lambda s: (s["bench"], s["method"])):
        rows.append([s["method"], s["bench"], f"{100 * s['accuracy']:.1f}",
                     f"[{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]", str(s["n"]),
                     f"{s['generated_tokens']:.1f}", f"{s['latent_steps']:.0f}", f"{1000 * s['latency_s']:.2f}"])
    return header, rows


AGREEMENT_NOTE = ("Paired on problem ids. McNemar p: exact two-sided test that the problems only one method "
                  "gets right split evenly (a small p: the accuracy difference is unlikely to be chance).")


def agreement_table(pairs: list[dict]) -> Table:
    """One row per pair of methods on a benchmark (:func:`lori.analysis.stats.agreement`)."""
    header = ["benchmark", "A", "B", "n", "both right", "only A", "only B", "neither", "agree %", "McNemar p"]
    return header, [[p["bench"], p["a"], p["b"], str(p["n"]), str(p["both"]), str(p["only_a"]), str(p["only_b"]),
                     str(p["neither"]), f"{100 * p['agree']:.1f}", f"{p['p']:.3g}"] for p in pairs]


def factors_table(factors: dict) -> Table:
    """Per mode of a factors summary (:func:`lori.analysis.runs.load_factor_summary`): chosen rank and energy."""
    header = ["mode", "rank", "energy at rank %", "energy at ranks 1..8 %"]
    rows = [[mode, str(factors[f"rank_{mode}"]), f"{100 * factors[f'energy_{mode}']:.1f}",
             ", ".join(f"{100 * e:.0f}" for e in energy_curve(factors[f"spectrum_{mode}"])[:8])]
            for mode in ("layer", "hidden")]
    return header, rows


def factors_note(f: dict) -> str:
    return (f"{f['tokens']} CoT tokens, layers {f.get('layers')}, centred={f.get('centered')}, "
            f"scaling={f.get('layer_scaling')}; joint energy {100 * f['energy_joint']:.1f}%.")
