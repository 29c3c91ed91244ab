"""Where a run's numbers come from: the code's commit, the run's configuration, the software and the machine.

Accuracy does not depend on the machine, but every timing does (ms per problem, seconds per step),
and even the trained weights can differ between CPUs (threads change the order of float sums);
the report opens with :func:`provenance` so a reader sees where the results were measured.

Everything here is best effort: a fact that cannot be read (no git, an uninstalled package, a
CPU that does not say its name) is "unknown", never an error.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import lori
from lori.config import config_hash

UNKNOWN = "unknown"
#: distributions whose versions the report prints (lori's own comes from the package)
PACKAGES = ("torch", "transformers", "snakemake", "zarr", "numpy")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def code_commit(package: Path | None = None) -> str:
    """``<short commit>`` of the checkout the lori package runs from, ``" (dirty)"`` when tracked
    files differ from it. Without one (no git, a source archive, an installed copy) it says where
    the code came from instead: ``unknown (no git checkout: lori 0.1.0 from /path/to/lori)``."""
    package = (package or Path(lori.__file__).parent).resolve()
    origin = f"{UNKNOWN} (no git checkout: lori {lori.__version__} from {package})"
    try:
        top = Path(_git(package, "rev-parse", "--show-toplevel")).resolve()
        # an installed copy can sit inside some other repository (a venv in a checkout): not its commit
        if not (top / package.name / "__init__.py").samefile(package / "__init__.py"):
            return origin
        commit = _git(top, "rev-parse", "--short=12", "HEAD")
        dirty = _git(top, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return origin
    return commit + (" (dirty)" if dirty else "")


def package_versions() -> dict[str, str]:
    """``name -> version`` for lori and :data:`PACKAGES` ("not installed" where absent)."""
    out = {"lori": lori.__version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name (Linux ``model name``), else what :mod:`platform` knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


def gpu_model() -> str:
    """The first CUDA device's name, "none" without one (or without torch)."""
    try:
        import torch     # only here: the rest of the module stays torch-free
    except ImportError:
        return "none"
    if not torch.cuda.is_available():
        return "none"
    return f"{torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"


def stage_hashes(run: Path, summaries: list[dict], factors: dict | None) -> dict[str, str]:
    """``artifact -> config_hash`` of every stage config the run's artifacts record: the teacher's
    and each student's ``train_config.json``, the factors store, each evaluation summary."""
    out = {}
    for path in [run / "teacher" / "train_config.json", *sorted(run.glob("students/*/train_config.json"))]:
        try:
            h = json.loads(path.read_text()).get("config_hash")
        except (OSError, ValueError):
            continue
        if h:
            out[str(path.parent.relative_to(run))] = h
    if factors and factors.get("config_hash"):
        out["lowrank/factors"] = factors["config_hash"]
    for s in summaries:
        if s.get("config_hash"):
            out[f"eval/{s['method']}/{s['bench']}"] = s["config_hash"]
    return out


def training_threads(run: Path) -> list[int]:
    """The distinct ``threads`` the teacher and students were trained with (from ``train_config.json``)."""
    found = set()
    for path in [run / "teacher" / "train_config.json", *run.glob("students/*/train_config.json")]:
        try:
            t = json.loads(path.read_text()).get("threads")
        except (OSError, ValueError):
            continue
        if isinstance(t, int):
            found.add(t)
    return sorted(found)


def provenance(run: Path, summaries: list[dict], factors: dict | None = None) -> list[tuple[str, str]]:
    """The report's provenance block as ``(label, value)`` pairs; ``run`` is the run directory
    (``results/<run>``; a folder without the usual files just yields fewer facts)."""
    hashes = stage_hashes(run, summaries, factors)
    # one hash for the whole run: equal runs (same stage configs) print the same one
    run_hash = f"{config_hash(hashes)} (of {len(hashes)} stage configs)" if hashes else UNKNOWN
    threads = training_threads(run)
    newest = max((Path(p).stat().st_mtime for p in run.glob("eval/*/*.json")), default=None)
    return [
        ("code commit", code_commit()),
        ("run config hash", run_hash),
        ("packages", ", ".join(f"{k} {v}" for k, v in package_versions().items())),
        ("CPU", f"{cpu_model()} ({os.cpu_count() or '?'} logical cores)"),
        ("GPU", gpu_model()),
        ("training threads", ", ".join(map(str, threads)) or UNKNOWN),
        ("evaluated", datetime.datetime.fromtimestamp(newest).isoformat(sep=" ", timespec="minutes")
         if newest else UNKNOWN),
        ("report built", datetime.datetime.now().isoformat(sep=" ", timespec="minutes")),
    ]


PROVENANCE_NOTE = ("Code, software and machine are those of the process that built this report: the pipeline "
                   "builds it on the machine that ran the run, `lori report RUN` on a copied run does not. "
                   "Timings depend on the CPU and the thread count; the run config hash combines every stage's "
                   "recorded config hash (equal hashes: equal configurations).")
