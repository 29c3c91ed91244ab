"""The report's tables: one results table (accuracy, thought reliance, answer and training cost per
method and benchmark), accuracy by reasoning steps, ablations, per-problem agreement, low-rank structure.

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
    cost = {"steps": steps}
    if "sec_per_step" in metrics[-1]:
        cost["wall_s"] = steps * float(metrics[-1]["sec_per_step"])
    if all("flops" in r for r in metrics):
        cost["flops"] = total_flops(metrics)
    return cost


#: row order within a benchmark: the explicit-CoT teacher, No-CoT and the pause-token control, the baselines,
#: then LoRi (the papers' order)
METHOD_ORDER = ("cot_sft", "no_cot", "pause", "icot_kd", "icot_si", "coconut", "sim_cot", "codi", "lori")


RESULTS_NOTE = ("One row per method and benchmark. Accuracy: mean ± sample sd over seeds (one seed: the value); "
                "the 95% CI is Wilson's on all seeds' problems pooled; n is problems per seed. Shuffled-thought "
                "drop: accuracy minus the same student's accuracy when answering with another problem's thoughts "
                "(points; large = it relies on its own thoughts). Generated tokens and latent steps are per "
                "problem; the cost of an answer is their sum. Training cost per seed: optimizer steps, wall "
                "seconds and 6 x parameters x positions FLOPs; cot_sft's is the teacher's training.")


def _ordered(items: list[str], order: tuple[str, ...]) -> list[str]:
    """``items`` in ``order`` first, the others after in their given order."""
    return sorted(items, key=lambda x: (order.index(x) if x in order else len(order), items.index(x)))


def _report_order(keys, bench_order: tuple[str, ...]) -> list[tuple[str, str]]:
    """The ``(variant, bench)`` keys present, benchmark by benchmark (``bench_order`` first), and
    within one in :data:`METHOD_ORDER`, other variants after them in first-seen order."""
    benches = _ordered(list(dict.fromkeys(b for _, b in keys)), bench_order)
    variants = _ordered(list(dict.fromkeys(v for v, _ in keys)), METHOD_ORDER)
    return [(v, b) for b in benches for v in variants if (v, b) in keys]


def results_table(summaries: list[dict], metrics: dict[str, list[dict]], bench_order: tuple[str, ...] = ()) -> Table:
    """The report's one accuracy table: a row per variant and benchmark (seeds aggregated) with its
    accuracy, pooled CI, thought reliance, answer cost (tokens, latent steps, latency) and training cost.

    Benchmarks in ``bench_order`` come first, in that order; within one, methods follow
    :data:`METHOD_ORDER`, sweep variants after them in first-seen order.
    """
    header = ["benchmark", "method", "seeds", "n", "accuracy %", "95% CI (pooled)", "shuffled-thought drop (points)",
              "generated tokens", "latent steps", "ms / problem", "train steps", "train wall s", "train PFLOPs"]
    groups = group_by_variant(summaries)
    return header, [_result_row(variant, bench, groups[(variant, bench)], metrics)
                    for variant, bench in _report_order(groups, bench_order)]


def _result_row(variant: str, bench: str, group: list[dict], metrics: dict[str, list[dict]]) -> list[str]:
    lo, hi = wilson_interval(sum(s["correct"] for s in group), sum(s["n"] for s in group))
    drops = [s["thought_shuffle"]["drop"] for s in group if "thought_shuffle" in s]
    # cot_sft is the teacher: its training metrics are teacher_metrics.jsonl
    costs = [training_cost(metrics.get("teacher" if s["method"] == "cot_sft" else s["method"], [])) for s in group]
    costs = [c for c in costs if c]

    def cost_cell(key: str, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
        values = [c[key] for c in costs if key in c]
        return fmt.format(statistics.mean(values) / scale) if values else "—"

    def mean_cell(key: str, fmt: str, scale: float = 1.0) -> str:
        values = [s[key] for s in group if key in s]
        return fmt.format(scale * statistics.mean(values)) if values else "—"

    return [bench, variant, str(len(group)), "/".join(dict.fromkeys(str(s["n"]) for s in group)),
            _mean_sd([s["accuracy"] for s in group]), f"[{_pct(lo)}, {_pct(hi)}]",
            # a drop only when every seed measured one: a mean over some seeds would mislead
            _mean_sd(drops) if drops and len(drops) == len(group) else "—",
            mean_cell("generated_tokens", "{:.1f}"), mean_cell("latent_steps", "{:.0f}"),
            mean_cell("latency_s", "{:.2f}", 1000), cost_cell("steps"), cost_cell("wall_s"),
            cost_cell("flops", 1e15, "{:.3g}")]


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


ATTRIBUTION_NOTE = ("Rows: latent methods; columns: the step-level information each student gets from the "
                    "teacher (config report.attribution names the student of each cell). Accuracy: mean ± sample sd "
                    "over seeds [Wilson 95% CI on all seeds' problems pooled] (seeds); the training cost of each cell "
                    "is in the Results table (the cells are meant to be at equal training FLOPs). A cell that names "
                    "no student of the run shows its text: why it is empty.")


def attribution_table(summaries: list[dict], layout: dict, bench: str) -> Table | None:
    """Methods x step information on one benchmark. ``layout``: ``{"columns": [column names],
    "rows": [[row name, cell per column...]]}``, a cell naming the student variant of that cell or
    the reason it is empty (lists: the order is the author's). None when no cell's student was
    evaluated on ``bench``."""
    groups = group_by_variant(summaries)
    evaluated = {variant for variant, _ in groups}
    columns = list(layout.get("columns", []))
    rows, found = [], False
    for name, *cells in layout.get("rows", []):
        out = [name]
        for entry in (cells + [None] * len(columns))[:len(columns)]:
            group = groups.get((entry, bench)) if entry else None
            if group:
                found = True
                lo, hi = wilson_interval(sum(s["correct"] for s in group), sum(s["n"] for s in group))
                out.append(f"{_mean_sd([s['accuracy'] for s in group])} [{_pct(lo)}, {_pct(hi)}] ({len(group)}) "
                           f"`{entry}`")
            else:
                # a student of the run not evaluated here (or not yet), or the reason a cell is empty
                out.append("—" if entry in (None, "", "—") or entry in evaluated else f"— ({entry})")
        rows.append(out)
    return (["method", *columns], rows) if found else None


STEPS_NOTE = ("Accuracy % on the problems whose reference CoT has that many steps (n problems, all seeds pooled). "
              "Where accuracy falls with the step count, the method does not carry a chain of intermediate "
              "results; a latent method whose thoughts do carry it keeps more of its accuracy on long chains.")


def steps_table(step_rows: dict[tuple[str, str], list[tuple[int, bool]]], bench_order: tuple[str, ...] = ()) -> Table | None:
    """Accuracy by the reference CoT's step count, a row per variant and benchmark (seeds pooled);
    None when no benchmark mixes step counts (nothing to split)."""
    per_bench: dict[str, set[int]] = defaultdict(set)
    pooled: dict[tuple[str, str], dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for (method, bench), pairs in step_rows.items():
        for steps, correct in pairs:
            per_bench[bench].add(steps)
            pooled[(split_student(method)[0], bench)][steps].append(correct)
    split = {b: ks for b, ks in per_bench.items() if len(ks) > 1}    # a benchmark of one length has nothing to split
    if not split:
        return None
    counts = sorted({k for ks in split.values() for k in ks})
    header = ["benchmark", "method"] + [f"{k} step{'s' if k != 1 else ''}" for k in counts]
    shown = {key: by_steps for key, by_steps in pooled.items() if key[1] in split}

    def cell(outcomes: list[bool]) -> str:
        return f"{_pct(sum(outcomes) / len(outcomes))} ({len(outcomes)})" if outcomes else "—"

    return header, [[bench, variant] + [cell(shown[(variant, bench)].get(k, [])) for k in counts]
                    for variant, bench in _report_order(shown, bench_order)]


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
