r"""Stage ``report``: tables and figures from every evaluation, the factors and training logs.

Writes ``report/report.md``, a self-contained ``report/report.html`` (figures embedded as
base64 PNG: it opens from a mail attachment, no server, no sibling files) and every figure as
PNG + SVG. The page opens with a provenance block (code commit, run config hash, package versions,
CPU/GPU, threads, dates: :mod:`lori.analysis.provenance`), then one results table (accuracy with
its pooled 95% CI, shuffled-thought drop, generated tokens and latent steps per benchmark, training
cost), and only what that table lacks: accuracy by the reference CoT's step count, published
numbers, ablations, per-problem agreement, low-rank structure. Figures:

- ``spectrum``: energy vs rank per mode, chosen rank marked;
- ``effective_rank``: per-example effective rank and energy kept vs CoT length;
- ``training``: loss curves, one panel per loss term (losses only: no FLOPs, lr or timing), one line per method;
- ``accuracy_vs_tokens``: accuracy (Wilson 95% CI) vs generated tokens + latent steps, every method, every benchmark;
- ``agreement``: per-problem agreement between methods (from the ``eval/<method>/<bench>.jsonl`` rows);
- ``accuracy_vs_compute``: validation accuracy during training vs training FLOPs and wall time, every
  student, the teacher's final CoT accuracy as a line (from the metrics rows with ``val_accuracy``:
  a run with ``data.validation`` and ``eval_every``);
- a "Latent thoughts" section: a few test problems with each thought decoded by the logit lens
  (:mod:`lori.analysis.logit_lens`), after the teacher's CoT (when ``--students`` and ``--thought-data``
  are given).

A figure whose data is missing is drawn as a labelled placeholder, so the file set is fixed
(Snakemake's ``report()`` declares them). The statistics, tables, figures and rendering are
:mod:`lori.analysis`; this module only assembles them.

``lori report RUN`` finds every input under ``results/RUN/`` itself. Standalone stage form::

    python -m lori.report --evals results/quickstart/eval/*/*.json \
        --factors results/quickstart/lowrank/factors.zarr --metrics results/quickstart/students/*_metrics.jsonl \
        --out results/quickstart/report
"""
from __future__ import annotations

import argparse
import html
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lori.analysis import render
from lori.analysis.figures import draw_figures
from lori.analysis.provenance import PROVENANCE_NOTE, provenance
from lori.analysis.published import BENCHES, PUBLISHED_NOTE, published_table
from lori.analysis.runs import (
    load_extras,
    correctness,
    load_eval_rows,
    load_factor_summary,
    load_metrics,
    run_dir,
    run_inputs,
    step_rows,
    teacher_cots,
)
from lori.analysis.stats import agreement
from lori.analysis.tables import (
    AGREEMENT_NOTE,
    ATTRIBUTION_NOTE,
    RESULTS_NOTE,
    STEPS_NOTE,
    ablation_table,
    agreement_table,
    attribution_table,
    factors_note,
    factors_table,
    results_table,
    steps_table,
)
from lori.artifacts import evaluation
from lori.artifacts.store import atomic_path
from lori.cli import USER_ERRORS, setup_logging, stage_main, stage_summary

log = logging.getLogger("lori.report")


@dataclass
class ReportConfig:
    title: str = "LoRi report"
    run: str = ""
    thought_examples: int = 3          # test problems whose latent thoughts are decoded in the report (0: none)
    sweep: dict = field(default_factory=dict)   # the run's sweep variants (the ablation table)
    # the attribution table: {"columns": [...], "rows": [[row, cell per column...]]} (None: no table)
    attribution: dict | None = None


def _thoughts_section(cfg: ReportConfig, evals: list[str], summaries: list[dict], students: Sequence[str],
                      thought_data: str) -> render.Section | None:
    """The first problems of ``thought_data`` with each latent student's thoughts decoded, after the
    teacher's CoT from its evaluation rows; None when no student thinks in latent steps."""
    # torch and the models: imported only when a report decodes thoughts, so `lori report --help` stays instant
    from lori.analysis.logit_lens import format_trace, thought_traces, trace_html

    bench = Path(thought_data).stem
    cot_rows = [evaluation.rows_path(p) for p, s in zip(evals, summaries)
                if s["method"] == "cot_sft" and s["bench"] == bench]
    traces = thought_traces(students, thought_data, teacher_cots(cot_rows), cfg.thought_examples)
    if not traces:
        return None
    intro = ("Each continuous thought read by the logit lens (final norm + lm_head on its last-layer hidden "
             "state: top tokens with probabilities) and by the input embeddings nearest to the vector fed "
             f"back (cosine), after the teacher's whole CoT (thought i is not CoT step i: L_reason pairs "
             f"statistics, not positions; step anchors, when on, send step j of n to thought ceil(jK/n), both counted from 1); "
             f"first {cfg.thought_examples} problems of "
             f"`{bench}`. More: `lori thoughts --run RUN --method M --example ID`.")
    md = intro + "".join(f"\n\n### {name}\n" + "".join(f"\n```\n{format_trace(t)}\n```\n" for t in ts)
                         for name, ts in traces.items())
    page = f"<p>{html.escape(intro)}</p>" + "".join(
        f"<h3>{html.escape(name)}</h3>" + "".join(trace_html(t) for t in ts) for name, ts in traces.items())
    return render.Section("Latent thoughts", md, page)


def run(cfg: ReportConfig, evals: list[str], out: str, factors_path: str | None = None,
        metrics_paths: Sequence[str] = (), extra_json: Sequence[str] = (), students: Sequence[str] = (),
        thought_data: str | None = None) -> None:
    summaries = [evaluation.read_summary(p) for p in evals]
    if not summaries:
        raise ValueError("report: no evaluation summaries given")
    factors = load_factor_summary(factors_path) if factors_path else None
    eval_rows = load_eval_rows(evals)       # read once: per-problem agreement and accuracy by steps
    metrics, per_problem = load_metrics(metrics_paths), correctness(eval_rows)
    pairs = agreement(per_problem)
    thoughts = None
    if thought_data and students and cfg.thought_examples > 0:
        thoughts = _thoughts_section(cfg, evals, summaries, students, thought_data)
    # evaluations live in <run>/eval/<method>/<bench>.json (docs/artifacts.md)
    run_root = Path(evals[0]).resolve().parents[2]
    sections = [render.facts_section("Provenance", provenance(run_root, summaries, factors), PROVENANCE_NOTE),
                render.table_section("Results", results_table(summaries, metrics, bench_order=BENCHES), RESULTS_NOTE,
                                     note_first=True)]
    by_steps = steps_table(step_rows(eval_rows), bench_order=BENCHES)
    if by_steps:
        sections.append(render.table_section("Accuracy by reasoning steps", by_steps, STEPS_NOTE))
    if any(s["bench"] in BENCHES for s in summaries):
        sections.append(render.table_section("Published numbers (other base models)", published_table(),
                                             PUBLISHED_NOTE))
    for bench in dict.fromkeys(s["bench"] for s in summaries) if cfg.attribution else ():
        table = attribution_table(summaries, cfg.attribution, bench)
        if table:
            sections.append(render.table_section(f"Attribution: step information x method ({bench})", table,
                                                 ATTRIBUTION_NOTE))
    if cfg.sweep:
        sections.append(render.table_section("Ablations", ablation_table(summaries, cfg.sweep)))
    if pairs:
        sections.append(render.table_section("Per-problem agreement", agreement_table(pairs), AGREEMENT_NOTE))
    if factors is not None:
        sections.append(render.table_section("Low-rank structure", factors_table(factors), factors_note(factors)))
    if thoughts:
        sections.append(thoughts)
    sections += [render.json_section(name, obj) for name, obj in load_extras(extra_json).items()]
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        figures, missing = draw_figures(tmp, summaries, factors, metrics, per_problem)
        (tmp / "report.md").write_text(render.markdown_page(cfg.title, cfg.run, sections, figures))
        (tmp / "report.html").write_text(render.html_page(cfg.title, cfg.run, sections, figures, tmp))
    log.info("report written to %s (%d figures, %d placeholders)", out, len(figures), len(missing))


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        return main(argv)
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
    cfg, ns = stage_main(ReportConfig, argv, __doc__,
                         [("--evals", "evaluation summary jsons, comma-separated"), ("--out", "report directory"),
                          ("--factors", "(optional) factors Zarr store"),
                          ("--metrics", "(optional) training metrics jsonl files, comma-separated"),
                          ("--extra", "(optional) extra json summaries to include, comma-separated"),
                          ("--students", "(optional) student checkpoint dirs whose thoughts to decode, comma-separated"),
                          ("--thought-data", "(optional) records jsonl whose first problems' thoughts are decoded")],
                         "report")
    split = lambda s: [p for p in (s or "").split(",") if p]  # noqa: E731
    run(cfg, split(ns.evals), ns.out, ns.factors, split(ns.metrics), split(ns.extra), split(ns.students),
        ns.thought_data)
    stage_summary("report", metric=f"{len(split(ns.evals))} evaluations -> {ns.out}/report.html")


if __name__ == "__main__":
    main()
