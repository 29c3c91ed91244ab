"""Stage ``report``: tables and figures from every evaluation, the factors and training logs.

Writes ``report/report.md``, ``report/report.html`` and PNG figures:
``spectrum.png`` (energy vs rank per mode), ``effective_rank.png`` (per-example effective rank
and energy kept vs CoT length, when the factors store has them), ``accuracy_vs_tokens.png`` (accuracy against
generated tokens per method and benchmark), ``training.png`` (loss curves).

Standalone::

    python -m lori.report --evals results/quickstart/eval/*/*.json \
        --factors results/quickstart/lowrank/factors.zarr --metrics results/quickstart/students/*_metrics.jsonl \
        --out results/quickstart/report
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lori.io import atomic_path, open_store, read_array, read_json
from lori.lowrank import energy_curve
from lori.tables import ablation_table, methods_table

log = logging.getLogger("lori.report")


@dataclass
class ReportConfig:
    title: str = "LoRi report"
    run: str = ""
    sweep: dict = field(default_factory=dict)   # the run's sweep variants (the ablation table)


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(metrics: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["loss", "task", "reason", "anchor"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    for ax, key in zip(axes, keys):
        for name, rows in metrics.items():
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=name)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def run(cfg: ReportConfig, evals: list[str], out: str, factors_path: str | None = None,
        metrics_paths: Sequence[str] = (), extra_json: Sequence[str] = ()) -> None:
    summaries = [read_json(p) for p in evals]
    if not summaries:
        raise ValueError("report: no evaluation summaries given")
    header, rows = results_table(summaries)
    factors = load_factor_summary(factors_path) if factors_path else None
    metrics = {Path(p).name.replace("_metrics.jsonl", ""): _read_metrics(p) for p in metrics_paths}
    extras = {Path(p).parent.name + "/" + Path(p).stem: read_json(p) for p in extra_json}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        figures = []
        if factors is not None:
            plot_spectrum(factors, tmp / "spectrum.png")
            figures.append(("spectrum.png", "Energy captured vs rank, per mode, of the teacher's CoT trajectories"))
        if factors is not None and "effective_rank" in factors:
            plot_effective_rank(factors, tmp / "effective_rank.png")
            figures.append(("effective_rank.png", "Per-trajectory effective rank, and energy kept by the global "
                                                  "factors, vs CoT length"))
        plot_accuracy_tokens(summaries, tmp / "accuracy_vs_tokens.png")
        figures.append(("accuracy_vs_tokens.png", "Accuracy (Wilson 95% CI) vs generated tokens per problem"))
        if metrics:
            plot_training(metrics, tmp / "training.png")
            figures.append(("training.png", "Training losses (teacher and students)"))
        mh, mrows = methods_table(summaries, metrics)
        sections = [("Methods", _methods_note() + "\n\n" + md_table(mh, mrows),
                     f"<p>{html.escape(_methods_note())}</p>" + html_table(mh, mrows)),
                    ("Results per student", md_table(header, rows), html_table(header, rows))]
        if cfg.sweep:
            ah, arows = ablation_table(summaries, cfg.sweep)
            sections.append(("Ablations", md_table(ah, arows), html_table(ah, arows)))
        if factors is not None:
            frows = [[mode, str(factors[f"rank_{mode}"]), f"{100 * factors[f'energy_{mode}']:.1f}",
                      ", ".join(f"{100 * e:.0f}" for e in energy_curve(factors[f"spectrum_{mode}"])[:8])]
                     for mode in ("layer", "hidden")]
            fh = ["mode", "rank", "energy at rank %", "energy at ranks 1..8 %"]
            note = (f"{factors['tokens']} CoT tokens, layers {factors.get('layers')}, centred={factors.get('centered')}, "
                    f"scaling={factors.get('layer_scaling')}; joint energy {100 * factors['energy_joint']:.1f}%.")
            sections.append(("Low-rank structure", md_table(fh, frows) + "\n\n" + note,
                             html_table(fh, frows) + f"<p>{html.escape(note)}</p>"))
        for name, obj in extras.items():
            text = json.dumps(obj, indent=2)
            sections.append((name, f"```json\n{text}\n```", f"<pre>{html.escape(text)}</pre>"))
        md = [f"# {cfg.title}", "", f"Run `{cfg.run}`." if cfg.run else ""]
        hd = [f"<h1>{html.escape(cfg.title)}</h1>"]
        for title, md_body, html_body in sections:
            md += ["", f"## {title}", "", md_body]
            hd += [f"<h2>{html.escape(title)}</h2>", html_body]
        md += ["", "## Figures", ""]
        hd.append("<h2>Figures</h2>")
        for fname, caption in figures:
            md += [f"![{caption}]({fname})", "", f"*{caption}*", ""]
            hd.append(f'<figure><img src="{fname}" style="max-width:100%"><figcaption>{html.escape(caption)}</figcaption></figure>')
        (tmp / "report.md").write_text("\n".join(md) + "\n")
        style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}" \
                "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        (tmp / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(cfg.title)}"
                                         f"</title><style>{style}</style></head><body>{''.join(hd)}</body></html>\n")
    log.info("report written to %s", out)


def main(argv: Sequence[str] | None = None) -> None:
    from lori.cli import stage_main

    cfg, ns = stage_main(ReportConfig, argv, __doc__,
                         [("--evals", "evaluation summary jsons, comma-separated"), ("--out", "report directory"),
                          ("--factors", "(optional) factors Zarr store"),
                          ("--metrics", "(optional) training metrics jsonl files, comma-separated"),
                          ("--extra", "(optional) extra json summaries to include, comma-separated")],
                         lambda config, ns: {**config["report"], "run": config["run"], "sweep": config.get("sweep") or {}})
    split = lambda s: [p for p in (s or "").split(",") if p]  # noqa: E731
    run(cfg, split(ns.evals), ns.out, ns.factors, split(ns.metrics), split(ns.extra))


if __name__ == "__main__":
    main()
