"""Finding a run and reading its artifacts for analysis (report, ``lori compare``, ``lori thoughts``).

A run directory is ``results/<run>/`` laid out as docs/artifacts.md describes. This module
finds what the report needs in it (:func:`run_inputs`) and reads evaluation results
(through :mod:`lori.artifacts.evaluation`), training metrics, the factors store's spectra and
diagnostics, test problems and the teacher's CoT per problem. Torch-free.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from lori.analysis.stats import Correctness
from lori.artifacts import evaluation
from lori.artifacts.store import ArtifactError, open_store, read_array, read_json
from lori.data.records import Record, read_records


def run_dir(run: str, results: str = "results") -> Path:
    """``RUN`` as a name under ``results/`` or a path to a run directory."""
    path = Path(run)
    if path.is_dir() and ((path / "data").is_dir() or (path / "eval").is_dir()):
        return path
    path = Path(results) / run
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such run directory (give --results DIR or a path to the run)")
    return path


def summary_paths(run: Path) -> list[str]:
    """Every evaluation summary of a run (``eval/<method>/<bench>.json``), sorted; at least one."""
    paths = sorted(str(p) for p in run.glob("eval/*/*.json"))
    if not paths:
        raise FileNotFoundError(f"{run}/eval: no evaluation summaries (eval/<method>/<bench>.json); "
                                f"run the pipeline first (snakemake --cores 2)")
    return paths


def run_inputs(run: Path) -> dict:
    """Every report input of a run directory (what the Snakemake rule passes), as ``report.run`` keywords."""
    evals = summary_paths(run)
    benches = sorted({Path(p).stem for p in evals})
    bench = "test" if "test" in benches else benches[0]
    factors = run / "lowrank" / "factors.zarr"
    metrics = [run / "teacher_metrics.jsonl", *sorted(run.glob("students/*_metrics.jsonl"))]
    data = run / "data" / f"{bench}.jsonl"
    return {"evals": evals, "factors_path": str(factors) if factors.exists() else None,
            "metrics_paths": [str(p) for p in metrics if p.exists()],
            "extra_json": [str(p) for p in [run / "teacher_cot" / "summary.json"] if p.exists()],
            "students": sorted(str(p) for p in run.glob("students/*") if p.is_dir() and not p.name.startswith(".")),
            "thought_data": str(data) if data.exists() else None}


# ---------------------------------------------------------------- evaluations, metrics, factors
EvalRows = dict[tuple[str, str], tuple[Path, list[dict]]]   # (method, bench) -> (summary path, per-problem rows)


def load_eval_rows(summary_paths: Sequence[str]) -> EvalRows:
    """The per-problem rows next to each summary, read once for every view of them below
    (summaries without rows are left out)."""
    out = {}
    for p in summary_paths:
        rows_path, s = evaluation.rows_path(p), evaluation.read_summary(p)
        if rows_path.exists():
            out[(s["method"], s["bench"])] = (Path(p), evaluation.read_rows(rows_path))
    return out


def correctness(eval_rows: EvalRows) -> Correctness:
    """``(method, bench) -> {problem id: correct}``."""
    return {key: {r["id"]: bool(r["correct"]) for r in rows} for key, (_, rows) in eval_rows.items()}


def load_rows(summary_paths: Sequence[str]) -> Correctness:
    """``(method, bench) -> {problem id: correct}`` from the per-problem rows next to each summary
    (summaries without rows are left out)."""
    return correctness(load_eval_rows(summary_paths))


def step_rows(eval_rows: EvalRows) -> dict[tuple[str, str], list[tuple[int, bool]]]:
    """``(method, bench) -> [(cot_steps, correct), ...]``.

    Rows written before evaluation recorded ``cot_steps`` get it from the run's own benchmark
    records (``<run>/data/<bench>.jsonl`` beside ``eval/``) when those are there; problems whose
    step count is known neither way are left out."""
    out, steps_of = {}, {}
    for (method, bench), (summary, rows) in eval_rows.items():
        if any("cot_steps" not in r for r in rows):
            data = summary.resolve().parents[2] / "data" / f"{bench}.jsonl"    # <run>/eval/<method>/<bench>.json
            if data not in steps_of:
                steps_of[data] = {rec.id: len(rec.steps) for rec in read_records(data)} if data.exists() else {}
            rows = [r if "cot_steps" in r or r["id"] not in steps_of[data] else {**r, "cot_steps": steps_of[data][r["id"]]}
                    for r in rows]
        pairs = [(int(r["cot_steps"]), bool(r["correct"])) for r in rows if "cot_steps" in r]
        if pairs:
            out[(method, bench)] = pairs
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a training metrics jsonl (``*_metrics.jsonl``); none when the file is absent."""
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def load_metrics(paths: Sequence[str]) -> dict[str, list[dict]]:
    """``model name -> metrics rows``; ``students/lori_metrics.jsonl`` is ``lori``, the teacher's ``teacher``."""
    return {Path(p).name.replace("_metrics.jsonl", ""): read_metrics(p) for p in paths}


def load_extras(paths: Sequence[str]) -> dict[str, object]:
    """``<folder>/<stem> -> content`` of extra json summaries (e.g. ``teacher_cot/summary``)."""
    return {Path(p).parent.name + "/" + Path(p).stem: read_json(p) for p in paths}


def load_factor_summary(path: str) -> dict:
    """A factors store's attrs, its two mode spectra and, when present, its per-example diagnostics."""
    group = open_store(path, ["spectrum_layer", "spectrum_hidden"], kind="factors")
    attrs = dict(group.attrs)
    # per-example diagnostics: only in stores written since factorize computes them
    extra = [n for n in ("effective_rank", "cot_length", "energy_captured") if n in group]
    return {**attrs, "spectrum_layer": read_array(group, "spectrum_layer", path),
            "spectrum_hidden": read_array(group, "spectrum_hidden", path),
            **{n: read_array(group, n, path) for n in extra}}


# ---------------------------------------------------------------- problems and the teacher's CoT
def find_record(run: Path, example_id: str, bench: str | None = None) -> tuple[Record, str]:
    """The record with ``example_id`` and its split, searching ``data/<bench>.jsonl`` or every split."""
    files = [run / "data" / f"{bench}.jsonl"] if bench else sorted((run / "data").glob("*.jsonl"))
    for path in files:
        for r in read_records(path):
            if r.id == example_id:
                return r, path.stem
    raise ArtifactError(f"{run}/data: no example with id {example_id!r} in {', '.join(p.name for p in files)} "
                        f"(ids look like 'test-0')")


def teacher_cot_files(run: Path, split: str) -> tuple[list[Path], list[Path]]:
    """Where a run keeps the teacher's CoT for a split, most specific first: ``(evaluation rows of
    the teacher, its CoT records)``."""
    return [run / "eval" / "cot_sft" / f"{split}.jsonl"], sorted((run / "teacher_cot").glob("*.jsonl"))


def teacher_cots(eval_rows: Sequence[str | Path], records: Sequence[str | Path] = ()) -> dict[str, tuple[str, str]]:
    """``id -> (teacher's CoT text, source file)``: its generated text in evaluation rows
    (``prediction``), else the steps of its CoT records; the first file naming an id wins, absent
    files are skipped."""
    found: dict[str, tuple[str, str]] = {}
    for path in map(Path, eval_rows):
        if path.exists():
            for row in evaluation.read_rows(path):
                if row["id"] not in found and row["prediction"]:
                    found[row["id"]] = (row["prediction"], str(path))
    for path in map(Path, records):
        if path.exists():
            for r in read_records(path):
                text = " ".join(r.steps)
                if r.id not in found and text:
                    found[r.id] = (text, str(path))
    return found
