"""Stage ``report``: tables and figures from every evaluation, the factors and training logs.

Writes ``report/report.md``, a self-contained ``report/report.html`` (figures embedded as
base64 PNG: it opens from a mail attachment, no server, no sibling files) and every figure as
PNG + SVG:

- ``spectrum``: energy vs rank per mode, chosen rank marked;
- ``effective_rank``: per-example effective rank and energy kept vs CoT length;
- ``training``: loss curves, one panel per loss term, one line per method;
- ``accuracy_vs_tokens``: accuracy (Wilson 95% CI) vs generated tokens, every method, every benchmark;
- ``agreement``: per-problem agreement between methods (from the ``eval/<method>/<bench>.jsonl`` rows);
- a "Latent thoughts" section: a few test problems with each thought decoded by the logit lens
  (:mod:`lori.thoughts`), beside the teacher's CoT (when ``--students`` and ``--thought-data`` are given).

A figure whose data is missing is drawn as a labelled placeholder, so the file set is fixed
(Snakemake's ``report()`` declares them).

``lori report RUN`` finds every input under ``results/RUN/`` itself. Standalone stage form::

    python -m lori.report --evals results/quickstart/eval/*/*.json \
        --factors results/quickstart/lowrank/factors.zarr --metrics results/quickstart/students/*_metrics.jsonl \
        --out results/quickstart/report
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lori.artifacts.store import atomic_path, open_store, read_array, read_json
from lori.lowrank.maths import energy_curve
from lori.analysis.published import BENCHES, PUBLISHED_TOKENS, published_table
from lori.analysis.tables import ablation_table, methods_table, paper_table

log = logging.getLogger("lori.report")


FIGURES = ("spectrum", "effective_rank", "training", "accuracy_vs_tokens", "agreement")   # always written


@dataclass
class ReportConfig:
    title: str = "LoRi report"
    run: str = ""
    thought_examples: int = 3          # test problems whose latent thoughts are decoded in the report (0: none)
    sweep: dict = field(default_factory=dict)   # the run's sweep variants (the ablation table)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """``path`` (PNG) and the same figure as SVG next to it (vector, for papers)."""
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".svg"))
    _pyplot().close(fig)


def plot_placeholder(path: Path, title: str, reason: str) -> None:
    """A labelled empty figure: the report's file set stays fixed when an input is absent."""
    fig, ax = _pyplot().subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}: not available\n({reason})", ha="center", va="center", wrap=True)
    save_figure(fig, path)


def _read_metrics(path: str) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def results_table(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "benchmark", "accuracy %", "95% CI", "n", "generated tokens", "latent steps", "ms / problem"]
    rows = []
    for s in sorted(summaries, key=lambda s: (s["bench"], s["method"])):
        rows.append([s["method"], s["bench"], f"{100 * s['accuracy']:.1f}",
                     f"[{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]", str(s["n"]),
                     f"{s['generated_tokens']:.1f}", f"{s['latent_steps']:.0f}", f"{1000 * s['latency_s']:.2f}"])
    return header, rows


def plot_spectrum(factors: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, mode, rank in [(axes[0], "layer", factors["rank_layer"]), (axes[1], "hidden", factors["rank_hidden"])]:
        curve = energy_curve(factors[f"spectrum_{mode}"])
        ranks = np.arange(1, len(curve) + 1)
        ax.plot(ranks, 100 * curve, marker="o" if len(curve) <= 40 else None, ms=3, label="teacher trajectories")
        # what r of n dims would keep with no low-rank structure at all (isotropic data)
        ax.plot(ranks, 100 * ranks / len(curve), color="0.6", ls=":", label="isotropic (no structure)")
        ax.axvline(rank, color="C3", ls="--", label=f"chosen rank {rank} ({100 * curve[rank - 1]:.1f}%)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel(f"rank ({mode} mode)")
        ax.set_ylabel("energy captured (%)")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        ax.set_title(f"{mode} mode: {len(curve)} dims")
    fig.suptitle(f"Teacher trajectory spectra ({factors['tokens']} CoT tokens; joint energy "
                 f"{100 * factors['energy_joint']:.1f}% at {factors['rank_layer']}x{factors['rank_hidden']})")
    fig.tight_layout()
    save_figure(fig, path)


def plot_accuracy_tokens(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    benches = sorted({s["bench"] for s in summaries})
    methods = sorted({s["method"] for s in summaries})          # one colour per method across panels
    fig, axes = plt.subplots(1, len(benches), figsize=(4.5 * len(benches), 3.8), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        for s in sorted((s for s in summaries if s["bench"] == bench), key=lambda s: s["method"]):
            acc, lo, hi = 100 * s["accuracy"], 100 * s["ci_low"], 100 * s["ci_high"]
            label = s["method"] + (f" (K={s['latent_steps']:.0f})" if s.get("latent_steps") else "")
            ax.errorbar([s["generated_tokens"]], [acc], yerr=[[acc - lo], [hi - acc]], fmt="o",
                        color=f"C{methods.index(s['method'])}", capsize=4, label=label)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 100)
        ax.set_xlabel("generated tokens per problem (log)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(bench)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


NOT_LOSSES = {"step", "lr", "sec_per_step"}


def plot_training(metrics: dict[str, list[dict]], path: Path) -> None:
    """One panel per loss term (total, task, reason and its parts, anchor, ...), one line per method."""
    plt = _pyplot()
    keys = ["loss", "task", "reason", "anchor"]          # the main terms first, in the objective's order
    keys += sorted({k for rows in metrics.values() for r in rows for k in r} - NOT_LOSSES - set(keys))
    keys = [k for k in keys if any(k in r for rows in metrics.values() for r in rows)]
    cols = min(4, len(keys))
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(4 * cols, 3.4 * math.ceil(len(keys) / cols)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for i, (name, rows) in enumerate(sorted(metrics.items())):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=name, color=f"C{i}")
        ax.set_title(key)
        ax.set_xlabel("step")
        if all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- per-problem agreement
def load_rows(summary_paths: Sequence[str]) -> dict[tuple[str, str], dict[str, bool]]:
    """``(method, bench) -> {problem id: correct}`` from the per-problem jsonl next to each summary."""
    out = {}
    for p in summary_paths:
        rows_path, s = Path(p).with_suffix(".jsonl"), read_json(p)
        if rows_path.exists():
            rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
            out[(s["method"], s["bench"])] = {r["id"]: bool(r["correct"]) for r in rows}
    return out


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: are the discordant problems split 50/50?"""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def agreement(rows: dict[tuple[str, str], dict[str, bool]]) -> list[dict]:
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


def agreement_table(pairs: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["benchmark", "A", "B", "n", "both right", "only A", "only B", "neither", "agree %", "McNemar p"]
    return header, [[p["bench"], p["a"], p["b"], str(p["n"]), str(p["both"]), str(p["only_a"]), str(p["only_b"]),
                     str(p["neither"]), f"{100 * p['agree']:.1f}", f"{p['p']:.3g}"] for p in pairs]


def plot_agreement(rows: dict[tuple[str, str], dict[str, bool]], path: Path) -> None:
    """Per benchmark, a methods x methods heatmap of P(B right | A right); the diagonal is accuracy."""
    plt = _pyplot()
    benches = sorted({b for _, b in rows})
    fig, axes = plt.subplots(1, len(benches), figsize=(4.6 * len(benches), 4), squeeze=False)
    for ax, bench in zip(axes[0], benches):
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
        ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
        for (i, j), v in np.ndenumerate(mat):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=9)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_yticks(range(len(methods)), methods)
        ax.set_xlabel("B")
        ax.set_ylabel("A")
        ax.set_title(f"{bench}: % of A's right answers B also gets\n(diagonal: accuracy)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _binned_median(x: np.ndarray, y: np.ndarray, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Median of y per distinct x (when few) or per x-quantile bin; bins with < 3 points dropped."""
    if len(np.unique(x)) > 3 * bins:
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
        x_bin = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    else:
        x_bin = x
    pts = [(np.median(x[x_bin == b]), np.nanmedian(y[x_bin == b])) for b in np.unique(x_bin) if (x_bin == b).sum() >= 3]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def plot_effective_rank(factors: dict, path: Path) -> None:
    """Per-example effective rank, and energy kept by the global factors, against CoT length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = factors["cot_length"] > 0
    length, erank, kept = factors["cot_length"][ok], factors["effective_rank"][ok], 100 * factors["energy_captured"][ok]
    core = f"{factors['rank_layer']}x{factors['rank_hidden']}"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, y, label in [(axes[0], erank, "effective rank"), (axes[1], kept, f"energy kept by the {core} core (%)")]:
        # fainter points for bigger sets, so the density shows
        ax.scatter(length, y, s=7, lw=0, color="C0", alpha=float(np.clip(20 / np.sqrt(max(len(y), 1)), 0.05, 0.6)),
                   label="one trajectory")
        ax.plot(*_binned_median(length, y), color="C3", lw=2, marker="o", ms=3, label="median")
        ax.set_xlabel("CoT length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if len(length):
        top = float(length.max())
        axes[0].plot([1, top], [1, top], "k--", lw=1, label="upper bound: rank = length")
        axes[0].set_ylim(0, 1.05 * top)
        axes[0].set_title(f"effective rank: median {np.median(erank):.1f} at median length {np.median(length):.0f}")
        axes[1].set_title(f"energy kept per trajectory: median {np.nanmedian(kept):.1f}%")
    axes[1].axhline(100 * factors["energy_joint"], color="k", ls=":", lw=1,
                    label=f"all tokens: {100 * factors['energy_joint']:.1f}%")
    axes[1].set_ylim(0, 101)
    for ax in axes:
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Teacher CoT trajectories, one at a time ({int(ok.sum())} examples; layers {factors.get('layers')}, "
                 f"centred={factors.get('centered')}, scaling={factors.get('layer_scaling')})")
    fig.tight_layout()
    save_figure(fig, path)


def load_factor_summary(path: str) -> dict:
    group = open_store(path, ["spectrum_layer", "spectrum_hidden"], kind="factors")
    attrs = dict(group.attrs)
    # per-example diagnostics: only in stores written since factorize computes them
    extra = [n for n in ("effective_rank", "cot_length", "energy_captured") if n in group]
    return {**attrs, "spectrum_layer": read_array(group, "spectrum_layer", path),
            "spectrum_hidden": read_array(group, "spectrum_hidden", path),
            **{n: read_array(group, n, path) for n in extra}}


def _methods_note() -> str:
    return ("Accuracy: mean ± standard deviation over seeds (one seed: the value); the CI pools all seeds' "
            "problems. Shuffled thoughts: the same student answering with another problem's thoughts "
            "(drop = reliance on its own thoughts). Training cost per seed: optimizer steps, wall seconds, "
            "and 6 x parameters x positions FLOPs; the teacher (cot_sft) is counted under teacher training.")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def thought_traces(students: Sequence[str], data: str, teacher_cot_paths: Sequence[str], n: int) -> dict[str, list]:
    """``student name -> traces`` of the first ``n`` problems of ``data``, for latent students only."""
    import torch

    from lori.data.records import read_records
    from lori.model.latent import LatentStudent
    from lori.thoughts import teacher_cots, trace

    torch.set_num_threads(1)       # a few tiny forward passes; leave the cores to parallel jobs
    records, cots, out = read_records(data)[:n], teacher_cots(teacher_cot_paths), {}
    for path in students:
        meta = Path(path) / "latent.json"
        if n <= 0 or not meta.exists() or json.loads(meta.read_text()).get("latent_steps", 0) == 0:
            continue
        student, tokenizer = LatentStudent.load(path)
        student.eval()
        out[Path(path).name] = [trace(student, tokenizer, r, teacher_cot=cots.get(r.id)) for r in records]
    return out


def embed_png(path: Path) -> str:
    """An ``<img>`` carrying the PNG itself (base64 data URI): the HTML needs no sibling files."""
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"' \
           ' style="max-width:100%">'


def run(cfg: ReportConfig, evals: list[str], out: str, factors_path: str | None = None,
        metrics_paths: Sequence[str] = (), extra_json: Sequence[str] = (), students: Sequence[str] = (),
        thought_data: str | None = None) -> None:
    from lori.thoughts import format_trace, trace_html

    summaries = [read_json(p) for p in evals]
    if not summaries:
        raise ValueError("report: no evaluation summaries given")
    header, rows = results_table(summaries)
    factors = load_factor_summary(factors_path) if factors_path else None
    metrics = {Path(p).name.replace("_metrics.jsonl", ""): _read_metrics(p) for p in metrics_paths}
    extras = {Path(p).parent.name + "/" + Path(p).stem: read_json(p) for p in extra_json}
    per_problem = load_rows(evals)
    pairs = agreement(per_problem)
    traces = {}
    if thought_data and students and cfg.thought_examples > 0:
        bench = Path(thought_data).stem
        cot_rows = [str(Path(p).with_suffix(".jsonl")) for p, s in zip(evals, summaries)
                    if s["method"] == "cot_sft" and s["bench"] == bench]
        traces = thought_traces(students, thought_data, cot_rows, cfg.thought_examples)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        captions = {
            "spectrum": "Energy captured vs rank, per mode, of the teacher's CoT trajectories (chosen rank dashed)",
            "effective_rank": "Per-trajectory effective rank, and energy kept by the global factors, vs CoT length",
            "training": "Training losses per term (teacher and students)",
            "accuracy_vs_tokens": "Accuracy (Wilson 95% CI) vs generated tokens per problem, every method and benchmark",
            "agreement": "Per-problem agreement: % of A's correct answers that B also gets right (diagonal: accuracy)",
        }
        missing = {}
        if factors is not None:
            plot_spectrum(factors, tmp / "spectrum.png")
        else:
            missing["spectrum"] = "no factors store given"
        if factors is not None and "effective_rank" in factors:
            plot_effective_rank(factors, tmp / "effective_rank.png")
        else:
            missing["effective_rank"] = "no per-example diagnostics in the factors store"
        if metrics and any(metrics.values()):
            plot_training(metrics, tmp / "training.png")
        else:
            missing["training"] = "no training metrics given"
        plot_accuracy_tokens(summaries, tmp / "accuracy_vs_tokens.png")
        if per_problem:
            plot_agreement(per_problem, tmp / "agreement.png")
        else:
            missing["agreement"] = "no per-problem eval rows next to the summaries"
        for name, reason in missing.items():
            plot_placeholder(tmp / f"{name}.png", name, reason)
        figures = [(f"{name}.png", captions[name]) for name in FIGURES if name not in missing]
        mh, mrows = methods_table(summaries, metrics)
        ph, prows = paper_table(summaries, bench_order=BENCHES)
        paper_note = ("Accuracy: mean ± sample sd over seeds [Wilson 95% CI on all seeds' problems pooled]; "
                      "tokens and latency averaged over the benchmarks.")
        sections = [("Paper-style table", md_table(ph, prows) + "\n\n" + paper_note,
                     html_table(ph, prows) + f"<p>{html.escape(paper_note)}</p>")]
        if any(s["bench"] in BENCHES for s in summaries):
            bh, brows = published_table()
            note = ("Published GSM8K-Aug-trained models at their full budgets (DESIGN.md §7): a reference for the "
                    "ordering of methods, not comparable in absolute terms with a run on another base model or "
                    f"budget. Coconut reports {PUBLISHED_TOKENS['coconut']} generated tokens per GSM8K problem vs "
                    f"{PUBLISHED_TOKENS['cot_sft']} for CoT.")
            sections.append(("Published numbers (other base models)", md_table(bh, brows) + "\n\n" + note,
                             html_table(bh, brows) + f"<p>{html.escape(note)}</p>"))
        sections += [("Methods", _methods_note() + "\n\n" + md_table(mh, mrows),
                     f"<p>{html.escape(_methods_note())}</p>" + html_table(mh, mrows)),
                    ("Results per student", md_table(header, rows), html_table(header, rows))]
        if cfg.sweep:
            ah, arows = ablation_table(summaries, cfg.sweep)
            sections.append(("Ablations", md_table(ah, arows), html_table(ah, arows)))
        if pairs:
            ah, ar = agreement_table(pairs)
            note = ("Paired on problem ids. McNemar p: exact two-sided test that the problems only one method "
                    "gets right split evenly (a small p: the accuracy difference is unlikely to be chance).")
            sections.append(("Per-problem agreement", md_table(ah, ar) + "\n\n" + note,
                             html_table(ah, ar) + f"<p>{html.escape(note)}</p>"))
        if factors is not None:
            frows = [[mode, str(factors[f"rank_{mode}"]), f"{100 * factors[f'energy_{mode}']:.1f}",
                      ", ".join(f"{100 * e:.0f}" for e in energy_curve(factors[f"spectrum_{mode}"])[:8])]
                     for mode in ("layer", "hidden")]
            fh = ["mode", "rank", "energy at rank %", "energy at ranks 1..8 %"]
            note = (f"{factors['tokens']} CoT tokens, layers {factors.get('layers')}, centred={factors.get('centered')}, "
                    f"scaling={factors.get('layer_scaling')}; joint energy {100 * factors['energy_joint']:.1f}%.")
            sections.append(("Low-rank structure", md_table(fh, frows) + "\n\n" + note,
                             html_table(fh, frows) + f"<p>{html.escape(note)}</p>"))
        if traces:
            intro = ("Each continuous thought read by the logit lens (final norm + lm_head on its last-layer hidden "
                     "state: top tokens with probabilities) and by the input embeddings nearest to the vector fed "
                     f"back (cosine), beside the teacher's CoT; first {cfg.thought_examples} problems of "
                     f"`{Path(thought_data).stem}`. More: `lori thoughts --run RUN --method M --example ID`.")
            md_body = intro + "".join(f"\n\n### {name}\n" + "".join(f"\n```\n{format_trace(t)}\n```\n" for t in ts)
                                      for name, ts in traces.items())
            html_body = f"<p>{html.escape(intro)}</p>" + "".join(
                f"<h3>{html.escape(name)}</h3>" + "".join(trace_html(t) for t in ts) for name, ts in traces.items())
            sections.append(("Latent thoughts", md_body, html_body))
        for name, obj in extras.items():
            text = json.dumps(obj, indent=2)
            sections.append((name, f"```json\n{text}\n```", f"<pre>{html.escape(text)}</pre>"))
        md = [f"# {cfg.title}", "", f"Run `{cfg.run}`." if cfg.run else ""]
        hd = [f"<h1>{html.escape(cfg.title)}</h1>", f"<p>Run <code>{html.escape(cfg.run)}</code>.</p>" if cfg.run else ""]
        for title, md_body, html_body in sections:
            md += ["", f"## {title}", "", md_body]
            hd += [f"<h2>{html.escape(title)}</h2>", html_body]
        md += ["", "## Figures", "", "Each figure is also saved as SVG next to the PNG.", ""]
        hd += ["<h2>Figures</h2>", "<p>Each figure is also saved as SVG next to this file.</p>"]
        for fname, caption in figures:
            md += [f"![{caption}]({fname})", "", f"*{caption}*", ""]
            hd.append(f"<figure>{embed_png(tmp / fname)}<figcaption>{html.escape(caption)}</figcaption></figure>")
        (tmp / "report.md").write_text("\n".join(md) + "\n")
        style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}" \
                "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}code{font-size:90%}"
        # after load, <body data-figures-shown="k/n">: how many images a browser decoded (checked headless in tests)
        script = ("<script>addEventListener('load',()=>{const i=[...document.images];document.body.dataset.figuresShown="
                  "i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length})</script>")
        (tmp / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(cfg.title)}"
                                         f"</title><style>{style}</style></head><body>{''.join(hd)}{script}</body></html>\n")
    log.info("report written to %s (%d figures, %d placeholders)", out, len(figures), len(missing))


def run_inputs(run_path: Path) -> dict:
    """Every report input of a run directory laid out as DESIGN.md §5 (what the Snakemake rule passes)."""
    evals = sorted(str(p) for p in run_path.glob("eval/*/*.json"))
    if not evals:
        raise FileNotFoundError(f"{run_path}/eval: no evaluation summaries (eval/<method>/<bench>.json); "
                                f"run the pipeline first (snakemake --cores 2)")
    benches = sorted({Path(p).stem for p in evals})
    bench = "test" if "test" in benches else benches[0]
    factors = run_path / "lowrank" / "factors.zarr"
    metrics = [run_path / "teacher_metrics.jsonl", *sorted(run_path.glob("students/*_metrics.jsonl"))]
    return {"evals": evals, "factors_path": str(factors) if factors.exists() else None,
            "metrics_paths": [str(p) for p in metrics if p.exists()],
            "extra_json": [str(p) for p in [run_path / "teacher_cot" / "summary.json"] if p.exists()],
            "students": sorted(str(p) for p in run_path.glob("students/*") if p.is_dir() and not p.name.startswith(".")),
            "thought_data": str(run_path / "data" / f"{bench}.jsonl") if (run_path / "data" / f"{bench}.jsonl").exists()
            else None}


RUN_HELP = """\
Rebuild the report of one run from what is under results/RUN/: the results table, per-problem
agreement, low-rank structure, decoded latent thoughts, and the figures (PNG + SVG), written to
results/RUN/report/ (report.md and a self-contained report.html: open it in any browser).

Snakemake builds the same report at the end of the DAG; this command is for runs you copied,
changed by hand, or want titled differently. The stage form, with explicit inputs, is
`python -m lori.report --evals A.json,B.json --out DIR [--factors ...]` (see its --help).
"""


def cli(argv: Sequence[str] | None = None) -> None:
    """``lori report RUN``; with flags only (``lori report --evals ...``) it is the stage CLI."""
    import argparse
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        return main(argv)
    from lori.cli import USER_ERRORS, setup_logging
    from lori.thoughts import run_dir

    ap = argparse.ArgumentParser(prog="lori report", description=RUN_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run name under --results (e.g. quickstart) or a path to a run directory")
    ap.add_argument("--results", default="results", help="folder holding the runs (default: results)")
    ap.add_argument("--out", help="report directory (default: <run>/report)")
    ap.add_argument("--title", help="report title (default: 'LoRi report: RUN')")
    ap.add_argument("--thought-examples", type=int, default=ReportConfig.thought_examples,
                    help=f"problems whose latent thoughts are decoded (default: {ReportConfig.thought_examples})")
    args = ap.parse_args(argv)
    setup_logging()
    try:
        path = run_dir(args.run, args.results)
        cfg = ReportConfig(title=args.title or f"LoRi report: {path.name}", run=path.name,
                           thought_examples=args.thought_examples)
        out = args.out or str(path / "report")
        run(cfg, out=out, **run_inputs(path))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {out}/report.html (open it in a browser) and {out}/report.md")


def main(argv: Sequence[str] | None = None) -> None:
    from lori.cli import stage_main, stage_summary

    cfg, ns = stage_main(ReportConfig, argv, __doc__,
                         [("--evals", "evaluation summary jsons, comma-separated"), ("--out", "report directory"),
                          ("--factors", "(optional) factors Zarr store"),
                          ("--metrics", "(optional) training metrics jsonl files, comma-separated"),
                          ("--extra", "(optional) extra json summaries to include, comma-separated"),
                          ("--students", "(optional) student checkpoint dirs whose thoughts to decode, comma-separated"),
                          ("--thought-data", "(optional) records jsonl whose first problems' thoughts are decoded")],
                         lambda config, ns: {**config["report"], "run": config["run"], "sweep": config.get("sweep") or {}})
    split = lambda s: [p for p in (s or "").split(",") if p]  # noqa: E731
    run(cfg, split(ns.evals), ns.out, ns.factors, split(ns.metrics), split(ns.extra), split(ns.students),
        ns.thought_data)
    stage_summary("report", metric=f"{len(split(ns.evals))} evaluations -> {ns.out}/report.html")


if __name__ == "__main__":
    main()
