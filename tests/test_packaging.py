"""A plain (non-editable) install is a complete package: it finds its schema without the repository."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_package_finds_its_schema(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lori", src / "lori", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, cwd=tmp_path)
    assert not (target / "lori" / "schemas" / "config.schema.yaml").is_symlink()
    code = ("import lori.config as c, yaml, sys; "
            f"cfg = c.validate_config(yaml.safe_load(open({str(ROOT / 'config' / 'config.yaml')!r})), 'config'); "
            "print(c.__file__); print(cfg['distill']['codi']['distill_weight'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": ""}).stdout.split()
    assert out[0] == str(target / "lori" / "config.py"), out      # the installed copy, not the repository's
    assert out[1] == "1.0"                                         # a schema default was filled in
