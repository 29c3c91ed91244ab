"""Stored loss regression: the first training steps of every trained stage give the recorded numbers.

A guard for refactors that must change no numbers. With a fixed seed, on CPU, one thread, a tiny
from-scratch teacher is trained 4 steps (``teacher_sft``), its hidden states are dumped, factorized
and projected into targets, and each student method (``no_cot``, ``lori``, ``codi``, ``coconut``,
``icot_si``) is distilled 4 steps from it. Every logged number of every step (the loss, its terms
such as ``task``/``reason``/``anchor``/``distill``, the learning rate, the FLOP count) must equal
the values in ``tests/data/loss_regression.json`` to ``rtol=1e-5``: CPU runs are deterministic, the
tolerance only absorbs summation-order noise across BLAS builds.

When a change is *meant* to change the numbers, re-record (and say so in the commit)::

    python -m tests.test_regression --record

The chain is built here, not from the shared fixtures in ``tests/conftest.py``, so that editing a
fixture cannot silently change what is pinned.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from lori import distill, dump_hidden, factorize, prepare_data, targets, teacher_sft
from lori.distill import DistillConfig
from lori.teacher_sft import TeacherSFTConfig
from tests.tiny import RUNTIME, TINY

STORED = Path(__file__).parent / "data" / "loss_regression.json"
RTOL = 1e-5
STEPS = 4
# the curricula advance every step so that 4 steps cover each schedule change: coconut goes through
# its 4 stages; icot_si removes 0, 1, 2 CoT tokens (plus its random smoothing offset), then all of them
CURRICULUM = {"coconut": {"steps_per_stage": 1}, "icot_si": {"steps_per_stage": 8, "remove_all_beyond": 3}}
METHODS = ("no_cot", "lori", "codi", "coconut", "icot_si")
CPU = {"seed": 0, "threads": 1, "device": "cpu", "checkpoint_every": 0}
VOLATILE = {"sec_per_step"}            # wall time: the only logged value that is not deterministic


def read_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def train_all(root: Path) -> dict[str, list[dict]]:
    """Run the chain in ``root``; return the per-step metric rows of ``teacher_sft`` and each method."""
    data, teacher = root / "train.jsonl", root / "teacher"
    prepare_data.main(["--split", "train", "--kind", "quickstart", "--n", "32", "--out", str(data)])
    teacher_sft.run(TeacherSFTConfig(scratch=json.loads(TINY), steps=STEPS, batch_size=8, log_every=1, **CPU),
                    str(data), str(teacher), str(root / "teacher_sft.jsonl"))
    hidden, factors, tgt = root / "calib.zarr", root / "factors.zarr", root / "targets.zarr"
    dump_hidden.main(["--teacher", str(teacher), "--records", str(data), "--out", str(hidden),
                      "--calibration-size", "16", "--batch-size", "8", *RUNTIME])
    factorize.main(["--hidden", str(hidden), "--out", str(factors), "--rank-layer", "2", "--rank-hidden", "4",
                    "--center"])
    targets.main(["--teacher", str(teacher), "--records", str(data), "--factors", str(factors), "--out", str(tgt),
                  "--batch-size", "16", *RUNTIME])
    for method in METHODS:
        k = {"latent_steps": 3} if method == "lori" else {}
        cfg = DistillConfig(method=method, steps=STEPS, batch_size=8, log_every=1, **k, **CURRICULUM.get(method, {}),
                            **CPU)
        distill.run(cfg, str(teacher), str(data), str(root / method), str(tgt), str(factors),
                    str(root / f"{method}.jsonl"))
    return {name: read_rows(root / f"{name}.jsonl") for name in ("teacher_sft", *METHODS)}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, list[dict]]:
    return train_all(tmp_path_factory.mktemp("regression"))


def stored_from() -> str:
    return json.loads(STORED.read_text())["recorded_from"]


def mismatches(got: list[dict], want: list[dict]) -> list[str]:
    """Every differing number, as readable lines (empty when the rows agree)."""
    if [sorted(r) for r in got] != [sorted(r) for r in want]:
        return [f"logged keys/steps differ: got {[sorted(r) for r in got]}, stored {[sorted(r) for r in want]}"]
    return [f"step {w['step']} {k}: got {g[k]!r}, stored {w[k]!r}"
            for g, w in zip(got, want) for k in w
            if not math.isclose(g[k], w[k], rel_tol=RTOL, abs_tol=1e-12)]


@pytest.mark.parametrize("stage", ("teacher_sft", *METHODS))
def test_first_steps_match_the_recorded_losses(measured, stage):
    stored = json.loads(STORED.read_text())["runs"]
    assert len(measured[stage]) == STEPS
    assert stored[stage], f"no stored values for {stage}"
    wrong = mismatches(measured[stage], stored[stage])
    if wrong:
        pytest.fail(f"{stage} no longer reproduces {STORED.name} (recorded from {stored_from()}):\n" + "\n".join(wrong))


def test_the_stored_values_pin_every_term():
    """The record holds each method's loss terms, so a refactor cannot drop one unnoticed."""
    stored = json.loads(STORED.read_text())["runs"]
    terms = {stage: set(rows[0]) - {"step", "lr", "flops"} for stage, rows in stored.items()}
    assert terms["teacher_sft"] == {"loss"}
    assert {"task", "reason", "anchor"} <= terms["lori"]
    assert "distill" in terms["codi"]


def test_a_perturbed_value_is_caught():
    stored = json.loads(STORED.read_text())["runs"]["lori"]
    perturbed = [dict(r) for r in stored]
    perturbed[2]["reason"] *= 1 + 10 * RTOL
    assert mismatches(perturbed, stored) == [f"step 3 reason: got {perturbed[2]['reason']!r}, "
                                             f"stored {stored[2]['reason']!r}"]
    assert mismatches(stored, stored) == []


if __name__ == "__main__" and "--record" in sys.argv:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = train_all(Path(tmp))
    # --commit names the source when recording from an exported tree (git archive) outside the repo
    commit = sys.argv[sys.argv.index("--commit") + 1] if "--commit" in sys.argv else subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    STORED.parent.mkdir(exist_ok=True)
    STORED.write_text(json.dumps({"recorded_from": commit,
                                  "steps": STEPS, "runs": runs}, indent=1) + "\n")
    print(f"recorded {', '.join(runs)} -> {STORED}")
