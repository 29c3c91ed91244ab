"""The report's figures, each written as PNG + SVG (vector, for papers).

- :func:`plot_spectrum`: energy vs rank per mode of the factors store, chosen rank marked;
- :func:`plot_effective_rank`: per-example effective rank and energy kept vs CoT length;
- :func:`plot_training`: loss curves, one panel per loss term, one line per method;
- :func:`plot_accuracy_tokens`: accuracy (Wilson 95% CI) vs generated tokens + latent steps, every method and benchmark;
- :func:`plot_agreement`: per-problem agreement between methods (heatmap per benchmark);
- :func:`plot_accuracy_compute`: validation accuracy vs training FLOPs and vs training wall time;
- :func:`plot_placeholder`: a labelled empty figure for one whose data is missing.

:func:`draw_figures` draws the report's fixed set (:data:`FIGURES`). matplotlib is imported on
first use, inside the functions (on the file-only Agg backend): it costs about half a second and
only drawing needs it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lori.analysis.stats import Correctness, conditional_agreement, wilson_interval
from lori.analysis.tables import group_by_variant
from lori.lowrank.maths import energy_curve
from lori.sweep import split_student

#: the figures of every report, always written (a placeholder when their data is missing)
FIGURES = ("spectrum", "effective_rank", "training", "accuracy_vs_tokens", "agreement", "accuracy_vs_compute")
CAPTIONS = {
    "spectrum": "Energy captured vs rank, per mode, of the teacher's CoT trajectories (chosen rank dashed)",
    "effective_rank": "Per-trajectory effective rank, and energy kept by the global factors, vs CoT length",
    "training": "Training losses per term (teacher and students)",
    "accuracy_vs_tokens": "Accuracy (seeds pooled, Wilson 95% CI) vs answer cost per problem: generated tokens "
                          "plus latent steps, every method and benchmark",
    "agreement": "Per-problem agreement: % of A's correct answers that B also gets right (diagonal: accuracy)",
    "accuracy_vs_compute": "Validation accuracy during training vs training FLOPs and vs training wall time "
                           "(validation excluded), every student; the teacher's final CoT accuracy dashed",
}
#: metrics columns that are not loss terms: schedule, speed and cost (validation rows add the last four,
#: and any other ``val_*`` key)
NOT_LOSSES = {"step", "lr", "sec_per_step", "flops", "val_accuracy", "val_n", "train_s", "flops_total"}


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


def plot_spectrum(factors: dict, path: Path) -> None:
    """Energy captured vs rank per mode, with the chosen rank and the isotropic baseline."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, mode, rank in [(axes[0], "layer", factors["rank_layer"]), (axes[1], "hidden", factors["rank_hidden"])]:
        curve = energy_curve(factors[f"spectrum_{mode}"])
        ranks = np.arange(1, len(curve) + 1)
        ax.plot(ranks, 100 * curve, marker="o" if len(curve) <= 40 else None, ms=3, label="teacher trajectories")
        # what r of n dims would keep with no low-rank structure at all (isotropic data)
        ax.plot(ranks, 100 * ranks / len(curve), color="0.6", ls=":", label="isotropic (no structure)")
        ax.axvline(rank, color="C3", ls="--", label=f"chosen rank {rank} ({100 * curve[rank - 1]:.1f}%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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


#: one marker per method, so points of equal cost and accuracy stay told apart without colour
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def accuracy_points(summaries: list[dict]) -> dict[str, list[dict]]:
    """``bench -> points``: one per variant (seeds pooled), each ``{"variant", "cost", "accuracy", "lo",
    "hi", "latent"}`` in %; ``cost`` is generated tokens plus latent steps per problem (a latent thought
    costs a forward pass, like a token)."""
    out: dict[str, list[dict]] = {}
    for (variant, bench), group in group_by_variant(summaries).items():
        if len(group) == 1:      # one seed: its own numbers (the same Wilson interval)
            acc, lo, hi = group[0]["accuracy"], group[0]["ci_low"], group[0]["ci_high"]
        else:
            correct, n = sum(s["correct"] for s in group), sum(s["n"] for s in group)
            acc, (lo, hi) = correct / max(n, 1), wilson_interval(correct, n)
        latent = float(np.mean([s.get("latent_steps", 0) for s in group]))
        cost = float(np.mean([s["generated_tokens"] for s in group])) + latent
        out.setdefault(bench, []).append({"variant": variant, "cost": cost, "accuracy": 100 * acc,
                                          "lo": 100 * lo, "hi": 100 * hi, "latent": latent})
    return out


def _spread(points: list[dict]) -> list[tuple[float, int]]:
    """``(x, k)`` per point: points of (almost) equal cost and accuracy are pulled apart by ~12% each
    way on the log axis so no marker hides another, and ``k`` (its rank among them) stacks their
    labels; the table carries the exact cost."""
    out = []
    for p in points:
        twins = [q for q in points if abs(np.log(max(q["cost"], 1) / max(p["cost"], 1))) < 0.05
                 and abs(q["accuracy"] - p["accuracy"]) < 4]
        k = twins.index(p)
        out.append((max(p["cost"], 1) * 1.12 ** (k - (len(twins) - 1) / 2), k))
    return out


def plot_accuracy_tokens(summaries: list[dict], path: Path) -> None:
    """Per benchmark, each variant's accuracy (seeds pooled, Wilson CI) against its answer cost:
    generated tokens + latent steps per problem (log x). One colour and marker per variant across
    panels, each point labelled with its variant; the legend sits below the panels."""
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    by_bench = accuracy_points(summaries)
    benches = sorted(by_bench)
    variants = sorted({p["variant"] for pts in by_bench.values() for p in pts})
    style = {v: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, v in enumerate(variants)}
    latent = {p["variant"] for pts in by_bench.values() for p in pts if p["latent"]}
    fig, axes = plt.subplots(1, len(benches), figsize=(5 * len(benches), 4.2), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        points = sorted(by_bench[bench], key=lambda p: p["variant"])
        for p, (x, k) in zip(points, _spread(points)):
            colour, marker = style[p["variant"]]
            ax.errorbar([x], [p["accuracy"]], yerr=[[p["accuracy"] - p["lo"]], [p["hi"] - p["accuracy"]]],
                        fmt=marker, ms=7, mfc="none" if p["latent"] else colour, mew=1.5, color=colour, capsize=3)
            ax.annotate(p["variant"], (x, p["accuracy"]), xytext=(7, 4 + 10 * k), textcoords="offset points",
                        fontsize=7, color=colour)
        ax.margins(x=0.15)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 100)
        ax.set_xlabel("generated tokens + latent steps per problem (log)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(bench)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], ls="none", marker=style[v][1], color=style[v][0], mfc="none" if v in latent else None,
                          mew=1.5, ms=7, label=v) for v in variants]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(variants), 6), fontsize=9, frameon=False,
               title="hollow: answers after latent steps", title_fontsize=8)
    rows = math.ceil(len(variants) / 6)
    fig.tight_layout(rect=(0, 0.08 + 0.05 * rows, 1, 1))
    save_figure(fig, path)


def loss_keys(metrics: dict[str, list[dict]]) -> list[str]:
    """The logged loss terms, main ones first in the objective's order: every numeric column but
    :data:`NOT_LOSSES` and validation's ``val_*`` (validation accuracy has its own figure)."""
    logged = {k for rows in metrics.values() for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    losses = {k for k in logged - NOT_LOSSES if not k.startswith("val_")}
    main = [k for k in ("loss", "task", "reason", "anchor") if k in losses]
    return main + sorted(losses - set(main))


def plot_training(metrics: dict[str, list[dict]], path: Path) -> None:
    """One panel per loss term (total, task, reason and its parts, anchor, ...), one line per method."""
    plt = _pyplot()
    keys = loss_keys(metrics)
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


def plot_agreement(rows: Correctness, path: Path) -> None:
    """Per benchmark, a methods x methods heatmap of P(B right | A right); the diagonal is accuracy."""
    plt = _pyplot()
    benches = sorted({b for _, b in rows})
    fig, axes = plt.subplots(1, len(benches), figsize=(4.6 * len(benches), 4), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        methods, mat = conditional_agreement(rows, bench)
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


def validation_rows(rows: list[dict]) -> list[dict]:
    """The metrics rows of a validation step (a number in ``val_accuracy``; pandas fills NaN elsewhere)."""
    return [r for r in rows if isinstance(r.get("val_accuracy"), (int, float)) and math.isfinite(r["val_accuracy"])]


def has_validation(metrics: dict[str, list[dict]]) -> bool:
    """Whether any student's training metrics have validation rows (``val_accuracy``)."""
    return any(validation_rows(rows) for name, rows in metrics.items() if name != "teacher")


def plot_accuracy_compute(metrics: dict[str, list[dict]], path: Path) -> None:
    """Validation accuracy of every student against its cumulative training FLOPs (left) and
    training wall seconds (right), one line per student (a variant's seeds share its colour), and
    the teacher's final CoT validation accuracy as a dashed line. Equal-compute comparisons are
    read off along a vertical line."""
    plt = _pyplot()
    curves = {name: validation_rows(rows) for name, rows in sorted(metrics.items()) if name != "teacher"}
    curves = {name: rows for name, rows in curves.items() if rows}
    variants = sorted({split_student(name)[0] for name in curves})
    teacher = validation_rows(metrics.get("teacher", []))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, scale, label in [(axes[0], "flops_total", 1e12, "training FLOPs (x 1e12)"),
                                  (axes[1], "train_s", 1.0, "training wall time (s, validation excluded)")]:
        labelled = set()
        for name, rows in curves.items():
            variant = split_student(name)[0]
            seeds = sum(split_student(n)[0] == variant for n in curves)
            ax.plot([r[key] / scale for r in rows], [100 * r["val_accuracy"] for r in rows], marker="o", ms=3,
                    color=f"C{variants.index(variant)}",
                    label=None if variant in labelled else variant + (f" ({seeds} seeds)" if seeds > 1 else ""))
            labelled.add(variant)
        if teacher:
            ax.axhline(100 * teacher[-1]["val_accuracy"], color="k", ls="--", lw=1,
                       label=f"teacher CoT (final, {100 * teacher[-1]['val_accuracy']:.1f}%)")
        ax.set_xlim(left=0)
        ax.set_ylim(0, 100)
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n = {r["val_n"] for rows in curves.values() for r in rows}
    fig.suptitle(f"Accuracy vs training compute (validation split, {'/'.join(map(str, sorted(n)))} problems)")
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
    plt = _pyplot()
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


def draw_figures(folder: Path, summaries: list[dict], factors: dict | None, metrics: dict[str, list[dict]],
                 per_problem: Correctness) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Every figure of :data:`FIGURES` into ``folder``, a placeholder for each whose input is missing.

    Returns ``([(file name, caption)] of the real figures, {name: why missing})``.
    """
    missing = {}
    if factors is not None:
        plot_spectrum(factors, folder / "spectrum.png")
    else:
        missing["spectrum"] = "no factors store given"
    if factors is not None and "effective_rank" in factors:
        plot_effective_rank(factors, folder / "effective_rank.png")
    else:
        missing["effective_rank"] = "no per-example diagnostics in the factors store"
    if loss_keys(metrics):
        plot_training(metrics, folder / "training.png")
    else:
        missing["training"] = "no training losses given"
    plot_accuracy_tokens(summaries, folder / "accuracy_vs_tokens.png")
    if per_problem:
        plot_agreement(per_problem, folder / "agreement.png")
    else:
        missing["agreement"] = "no per-problem eval rows next to the summaries"
    if has_validation(metrics):
        plot_accuracy_compute(metrics, folder / "accuracy_vs_compute.png")
    else:
        missing["accuracy_vs_compute"] = ("no validation rows in the students' training metrics "
                                          "(set data.validation and distill.common.eval_every)")
    for name, reason in missing.items():
        plot_placeholder(folder / f"{name}.png", name, reason)
    return [(f"{name}.png", CAPTIONS[name]) for name in FIGURES if name not in missing], missing
