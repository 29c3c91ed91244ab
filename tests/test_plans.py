"""Recorded job plans: for every config profile, ``snakemake -n -p --forceall`` plans exactly the
jobs and shell commands stored in ``tests/data/plans/<profile>.txt``.

Snakemake reruns a job whose command or params change, so this is the guard that a refactor
leaves every existing run's outputs cached. When a change is *meant* to change commands, re-record
(and say so in the commit)::

    python -m tests.test_plans --record

The default config is checked in CI; the other profiles (~4 s each) are marked slow.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORED = Path(__file__).parent / "data" / "plans"
PROFILES = [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "profiles").glob("*.yaml"))]
SKIP = re.compile(r"^\s*(jobid|reason):|^\[.*\d{4}\]$")


def plan(profile: Path, workdir: Path) -> str:
    """The normalised dry-run plan: one block per job (rule, inputs, outputs, resources, command), sorted."""
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "-s",
                          str(ROOT / "workflow" / "Snakefile"), "--configfile", str(profile),
                          "--directory", str(workdir)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    blocks, block = [], None
    for line in res.stdout.splitlines():
        if re.match(r"^(local)?rule \w+:", line):
            if block:
                blocks.append(block)
            block = [line]
        elif block is not None:
            if line.startswith(("Job stats", "This was a dry-run")):
                blocks.append(block)
                block = None
            elif line.strip() and not SKIP.match(line):
                block.append(line.rstrip())
    if block:
        blocks.append(block)
    return "\n\n".join(sorted("\n".join(b) for b in blocks)) + "\n"


def params():
    for p in PROFILES:
        marks = [] if p.name == "config.yaml" else [pytest.mark.slow]
        yield pytest.param(p, id=p.stem, marks=marks)


@pytest.mark.parametrize("profile", params())
def test_dry_run_plans_the_recorded_jobs(profile, tmp_path):
    stored = STORED / f"{profile.stem}.txt"
    assert stored.exists(), f"no recorded plan for {profile.name}: python -m tests.test_plans --record"
    got, want = plan(profile, tmp_path).splitlines(), stored.read_text().splitlines()
    if got != want:
        import difflib

        diff = "\n".join(list(difflib.unified_diff(want, got, "recorded", "now", lineterm="", n=1))[:60])
        pytest.fail(f"{profile.name}: the planned jobs changed (existing outputs would rerun):\n{diff}")


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    STORED.mkdir(parents=True, exist_ok=True)
    for p in PROFILES:
        with tempfile.TemporaryDirectory() as d:
            (STORED / f"{p.stem}.txt").write_text(plan(p, Path(d)))
        print("recorded", p.stem)
