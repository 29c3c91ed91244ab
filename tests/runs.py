"""Run directories for the tests: synthetic ones built in Python, real ones through Snakemake.

- :func:`make_run`: a synthetic run directory with every artifact the read-side tools use (report,
  thoughts, compare), built in about a second from random tiny models and made-up evaluation rows,
  so the tests of ``lori report RUN``, ``lori thoughts`` and ``lori compare`` need no pipeline run;
- :func:`write_hidden`: a hidden-state store as ``dump_hidden`` writes it, from given arrays;
- :func:`snakemake` / :func:`planned_jobs`: run the workflow (usually a dry run) in a scratch
  directory, and read the jobs it plans; :data:`MICRO` is the micro config of ``.test/``.

Torch-free at import: the Snakemake tests use this module without loading a model.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

from lori.artifacts import hidden
from lori.artifacts.store import finish_store, zarr_create, zarr_put
from tests.tiny import TINY

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
MICRO = ROOT / ".test" / "config.yaml"
STAGES = {"prepare_data", "teacher_sft", "teacher_cot", "dump_hidden", "factorize", "targets", "distill", "evaluate", "report"}

METHODS = {"cot_sft": 0.75, "no_cot": 0.25, "lori": 0.5}     # method -> made-up accuracy
BENCHES = ("test", "longer")


# ---------------------------------------------------------------- Snakemake
def snakemake(workdir: Path, *args: str, configfile: Path | None = None) -> subprocess.CompletedProcess:
    """``snakemake -s workflow/Snakefile --directory workdir --cores 2 [--configfile] args``, with this
    interpreter's ``bin/`` first on PATH so the jobs' ``python -m lori...`` find this environment."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), "--cores", "2"]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=600)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from a dry run's 'Job stats' table ({} when nothing to do)."""
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


# ---------------------------------------------------------------- synthetic artifacts
def write_hidden(path, H: np.ndarray, offsets, chunk: int = 32) -> str:
    """A hidden store as dump_hidden writes it (float16 states, small chunks to exercise streaming)."""
    g = zarr.open_group(str(path), mode="w")
    states = zarr_create(g, "states", H.shape, "float16", ["token", "layer", "hidden"], chunks=(chunk, *H.shape[1:]))
    states[...] = H.astype(np.float16)
    zarr_put(g, "offsets", np.asarray(offsets, dtype=np.int64), ["example_plus_one"])
    zarr_put(g, "example_id", np.array([f"ex{i}" for i in range(len(offsets) - 1)]), ["example"])
    zarr_put(g, "anchors", np.zeros((len(offsets) - 1, 1, *H.shape[1:]), np.float16), ["example", "anchor", "layer", "hidden"])
    g.attrs.update({"stage": "dump_hidden", "layers": list(range(1, H.shape[1] + 1)), "model": "synthetic"})
    finish_store(g, hidden.ARRAYS, hidden.coordinates(g.attrs["layers"]))
    return str(path)


def validation_row(step: int, accuracy: float, flops_per_step: float, sec_per_step: float, every: int = 2,
                   last: int = 5, n: int = 8) -> dict:
    """The keys a metrics row gets at a validation step (every ``every`` steps and the ``last``), else {}."""
    if step % every and step != last:
        return {}
    return {"flops_total": step * flops_per_step, "train_s": step * sec_per_step,
            "val_accuracy": accuracy, "val_n": n}


def make_run(root: Path, name: str = "tiny", seed: int = 0, n: int = 8) -> Path:
    """``root/name`` laid out like ``results/<run>`` (docs/artifacts.md), with a K=2 latent student."""
    import torch      # here, not above: the Snakemake helpers stay torch-free

    from lori import factorize
    from lori.data.generator import generate
    from lori.data.records import BOT, EOT, write_records
    from lori.evaluate import summarize
    from lori.model.latent import LatentStudent
    from lori.model.loading import build_scratch_model, build_word_tokenizer

    torch.manual_seed(seed)
    run = root / name
    records = {b: generate(n, seed + i, 2, 3 + i, 99, split=b) for i, b in enumerate(BENCHES)}
    for b, recs in records.items():
        write_records(run / "data" / f"{b}.jsonl", recs)
    tok = build_word_tokenizer([f"{r.question} || {r.cot} #### {r.answer}" for recs in records.values() for r in recs])
    for method, k in (("lori", 2), ("no_cot", 0)):
        model = build_scratch_model(json.loads(TINY), tok)
        student = LatentStudent(model, k, *tok.convert_tokens_to_ids([BOT, EOT]))
        student.save(run / "students" / method, tok)
        # what the training loop logs beside the losses: the schedule, speed and cost of each step
        rows = [{"step": s, "lr": 1e-3, "loss": 3.0 / s, "task": 2.0 / s,
                 **({"reason": 1.0 / s, "anchor": 0.5 / s} if k else {}),
                 "flops": 1.2e6 if k else 1e6, "sec_per_step": 0.2 if k else 0.1,
                 **validation_row(s, 0.1 * s + 0.05 * k, 1.2e6 if k else 1e6, 0.2 if k else 0.1)}
                for s in range(1, 6)]
        # distill's provenance file (lori.training.loop.provenance): the report reads its hash and threads
        (run / "students" / method / "train_config.json").write_text(
            json.dumps({"latent_steps": k, "threads": 1, "config_hash": f"{method}-hash", "lori_version": "0.1.0"}))
        (run / "students" / f"{method}_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "teacher_metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 4.0 / s,
                                                                   **validation_row(s, 0.7, 2e6, 0.3)}) + "\n"
                                                       for s in range(1, 6)))
    rng = np.random.default_rng(seed)
    for method, acc in METHODS.items():
        for i, (b, recs) in enumerate(records.items()):
            # the CoT gets longer on the longer benchmark: tokens differ per benchmark
            rows = [{"id": r.id, "prediction": (f"{r.cot} #### {r.answer}" if method == "cot_sft" else f"#### {r.answer}"),
                     "parsed": r.answer, "gold": r.answer, "correct": bool(rng.random() < acc),
                     "generated_tokens": 20 + 10 * i if method == "cot_sft" else 3,
                     "latent_steps": 2 if method == "lori" else 0,
                     "latency_s": 0.01, "cot_steps": len(r.steps)} for r in recs]
            out = run / "eval" / method / f"{b}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(json.dumps(r) + "\n" for r in rows))
            # evaluate's provenance keys too (the report's provenance block combines the config hashes)
            (out.with_suffix(".json")).write_text(json.dumps({**summarize(rows, method, b), "config_hash": f"eval-{b}",
                                                              "lori_version": "0.1.0"}))
    (run / "teacher_cot").mkdir()
    (run / "teacher_cot" / "summary.json").write_text(json.dumps({"kept": 7, "total": 8}))
    offsets = np.concatenate([[0], np.cumsum(rng.integers(2, 9, 12))])
    hidden = write_hidden(run / "hidden" / "calib.zarr", rng.standard_normal((offsets[-1], 3, 10)), offsets, chunk=16)
    factorize.main(["--hidden", hidden, "--out", str(run / "lowrank" / "factors.zarr"), "--rank-layer", "2",
                    "--rank-hidden", "3"])
    return run
