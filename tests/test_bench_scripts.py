"""Every benchmark under bench/ starts as its docs run it (``python bench/<name>.py``): its imports
resolve from the script's own folder and the package, and its command line parses (``--help``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = {"benchlib.py", "scratch.py"}          # imported by the scripts, not run
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name not in LIBRARIES)


def test_every_script_is_listed():
    assert "flops_plan.py" in SCRIPTS and "peers.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_starts_from_the_repository_root(script):
    res = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout
