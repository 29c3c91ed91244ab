"""Load a finished run and draw its figures: a tour of the artifacts with plain zarr / xarray / pandas.

    python examples/explore_artifacts.py results/quickstart            # figures -> results/quickstart/explore/
    python examples/explore_artifacts.py results/quickstart --out figs --example test-0

Each step prints what it loaded, so this file doubles as a cookbook (docs/artifacts.md has the
layouts). The figures are the report's own (lori.analysis.figures), drawn from the raw arrays.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr          # pip install -e ".[xarray]": every store is an xarray dataset with named dims

from lori.analysis.figures import (
    has_validation,
    plot_accuracy_compute,
    plot_accuracy_tokens,
    plot_agreement,
    plot_effective_rank,
    plot_spectrum,
    plot_training,
)
from lori.analysis.runs import load_factor_summary, load_rows
from lori.analysis.stats import agreement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory, e.g. results/quickstart")
    ap.add_argument("--out", help="where to write the figures (default: RUN/explore)")
    ap.add_argument("--example", help="also decode this example's latent thoughts (needs a lori student)")
    args = ap.parse_args()
    run = Path(args.run)
    out = Path(args.out or run / "explore")
    out.mkdir(parents=True, exist_ok=True)

    # 1. evaluation: summaries (json) and per-problem rows (jsonl) with pandas
    summary_paths = sorted(run.glob("eval/*/*.json"))
    summaries = [json.loads(p.read_text()) for p in summary_paths]
    table = pd.DataFrame(summaries)[["method", "bench", "accuracy", "ci_low", "ci_high", "generated_tokens"]]
    print(table.sort_values(["bench", "method"]).to_string(index=False))
    plot_accuracy_tokens(summaries, out / "accuracy_vs_tokens.png")
    rows = load_rows([str(p) for p in summary_paths])        # (method, bench) -> {id: correct}
    plot_agreement(rows, out / "agreement.png")
    for pair in agreement(rows):
        print(f"{pair['bench']}: {pair['a']} vs {pair['b']}: only {pair['a']} {pair['only_a']}, "
              f"only {pair['b']} {pair['only_b']}, McNemar p {pair['p']:.3g}")

    # 2. training curves: one jsonl per model
    metrics = {p.name.replace("_metrics.jsonl", ""): pd.read_json(p, lines=True).to_dict("records")
               for p in [run / "teacher_metrics.jsonl", *sorted(run.glob("students/*_metrics.jsonl"))] if p.exists()}
    plot_training(metrics, out / "training.png")
    if has_validation(metrics):      # a run with data.validation and eval_every: accuracy-vs-compute curves
        plot_accuracy_compute(metrics, out / "accuracy_vs_compute.png")

    # 3. the low-rank structure: the factors store, raw, then the report's figures
    factors_path = run / "lowrank" / "factors.zarr"
    if factors_path.exists():
        f = xr.open_zarr(factors_path)
        spec = f["spectrum_hidden"]                            # dims ('hidden',), attrs description / units
        energy = (spec.cumsum("hidden") / spec.sum()).values
        r = f.attrs["rank_hidden"]
        print(f"hidden mode: rank {r} of {spec.sizes['hidden']} keeps {100 * energy[r - 1]:.1f}% of the energy; "
              f"joint core {f.attrs['rank_layer']}x{r}: {100 * f.attrs['energy_joint']:.1f}%")
        summary = load_factor_summary(str(factors_path))
        plot_spectrum(summary, out / "spectrum.png")
        if "effective_rank" in summary:
            plot_effective_rank(summary, out / "effective_rank.png")

    # 4. one teacher trajectory from the hidden-state dump
    hidden_path = run / "hidden" / "calib.zarr"
    if hidden_path.exists():
        h = xr.open_zarr(hidden_path)
        off = h["offsets"].values
        first = h["states"].isel(token=slice(off[0], off[1])).astype(np.float32)   # one example's CoT tokens
        norms = np.sqrt((first ** 2).sum(["token", "hidden"]))                    # per layer, labelled by model index
        print(f"example {h['example_id'].values[0]}: trajectory {dict(first.sizes)}, "
              f"norm per layer {norms.round(1).to_series().to_dict()}")

    # 5. latent thoughts of one example (the same as `lori thoughts`)
    if args.example:
        from lori.analysis.logit_lens import format_trace, trace_run  # torch: only when asked

        print(format_trace(trace_run(run, "lori", args.example)))
    print(f"figures in {out}/")


if __name__ == "__main__":
    main()
