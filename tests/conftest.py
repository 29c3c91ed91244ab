"""Shared fixtures: the tiny teacher and the synthetic run, built once per session; torch's global
state put back after every test; the hub offline for the whole session.

The session fixtures are shared by many test modules, so they are read-only: a test that changes
a file copies the directory first (``shutil.copytree`` into its ``tmp_path``). The tiny teacher's
files are checked at the end of the session, and a test that wrote into them fails there.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.runs import make_run
from tests.tiny import TinyTeacher, digest_tree, train_tiny_teacher

# the suite never downloads, whichever module happens to import huggingface_hub first (it reads
# this once, at import); that the package gets this right alone is test_cli's hub-offline test
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> TinyTeacher:
    """48 training and 12 test problems, and a tiny from-scratch teacher trained 3 steps on them."""
    teacher = train_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"))
    before = digest_tree(teacher.root)
    yield teacher
    after = digest_tree(teacher.root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"a test changed the shared tiny teacher run (copy it first): {sorted(changed)}"


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory) -> Path:
    """:func:`tests.runs.make_run`'s run directory (random tiny students, made-up evaluations); read-only."""
    return make_run(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(autouse=True)
def restore_torch_globals():
    """Stages set torch's thread count and seed globally (``setup_runtime``): undo it after each test,
    so a test's numbers do not depend on which tests ran before it."""
    torch = sys.modules.get("torch")           # tests that never import torch do not pay for it
    saved = (torch.get_default_dtype(), torch.get_num_threads(), torch.get_rng_state()) if torch else None
    yield
    if saved:
        torch.set_default_dtype(saved[0])
        torch.set_num_threads(saved[1])
        torch.set_rng_state(saved[2])
