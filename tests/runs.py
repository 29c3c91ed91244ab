"""A synthetic run directory with every artifact the read-side tools use (report, thoughts, compare).

Built in about a second from random tiny models and made-up evaluation rows, so the tests of
``lori report RUN``, ``lori thoughts`` and ``lori compare`` need no pipeline run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.tiny import TINY

METHODS = {"cot_sft": 0.75, "no_cot": 0.25, "lori": 0.5}     # method -> made-up accuracy
BENCHES = ("test", "longer")


def make_run(root: Path, name: str = "tiny", seed: int = 0, n: int = 8) -> Path:
    """``root/name`` laid out like ``results/<run>`` (DESIGN.md §5), with a K=2 latent student."""
    import torch

    from lori import factorize
    from lori.data.records import BOT, EOT, write_records
    from lori.evaluate import summarize
    from lori.model.latent import LatentStudent
    from lori.model.loading import build_scratch_model, build_word_tokenizer
    from lori.data.generator import generate
    from tests.test_factorize import write_hidden

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
        rows = [{"step": s, "loss": 3.0 / s, "task": 2.0 / s, **({"reason": 1.0 / s, "anchor": 0.5 / s} if k else {})}
                for s in range(1, 6)]
        (run / "students" / f"{method}_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "teacher_metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 4.0 / s}) + "\n" for s in range(1, 6)))
    rng = np.random.default_rng(seed)
    for method, acc in METHODS.items():
        for b, recs in records.items():
            rows = [{"id": r.id, "prediction": (f"{r.cot} #### {r.answer}" if method == "cot_sft" else f"#### {r.answer}"),
                     "parsed": r.answer, "gold": r.answer, "correct": bool(rng.random() < acc),
                     "generated_tokens": 20 if method == "cot_sft" else 3, "latent_steps": 2 if method == "lori" else 0,
                     "latency_s": 0.01} for r in recs]
            out = run / "eval" / method / f"{b}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(json.dumps(r) + "\n" for r in rows))
            (out.with_suffix(".json")).write_text(json.dumps(summarize(rows, method, b)))
    (run / "teacher_cot").mkdir()
    (run / "teacher_cot" / "summary.json").write_text(json.dumps({"kept": 7, "total": 8}))
    offsets = np.concatenate([[0], np.cumsum(rng.integers(2, 9, 12))])
    hidden = write_hidden(run / "hidden" / "calib.zarr", rng.standard_normal((offsets[-1], 3, 10)), offsets, chunk=16)
    factorize.main(["--hidden", hidden, "--out", str(run / "lowrank" / "factors.zarr"), "--rank-layer", "2",
                    "--rank-hidden", "3"])
    return run
