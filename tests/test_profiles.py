"""Every YAML under config/ (the quickstart and the paper profiles) validates against the schema,
documents how to launch it, builds every stage's dataclass, and names data files that exist."""
from __future__ import annotations


from pathlib import Path

import pytest

from lori.config import load_config, to_flags
from lori.data.sources import is_local
from lori.prepare_data import PrepareDataConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"

CONFIGS = sorted((ROOT / "config").rglob("*.yaml"))
PROFILES = [p for p in CONFIGS if p.parent.name == "profiles"]


def test_profiles_exist():
    names = {p.name for p in PROFILES}
    assert {"smollm2-gsm8k-gpu.yaml", "smollm2-gsm8k-cpu.yaml", "gpt2-gsm8k-gpu.yaml", "llama3.2-1b-gsm8k-gpu.yaml",
            "qwen2.5-0.5b-gsm8k-gpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_validates_and_builds_stage_configs(path):
    from lori.convert_model import ConvertModelConfig
    from lori.distill import DistillConfig
    from lori.teacher_cot import TeacherCoTConfig
    from lori.teacher_sft import TeacherSFTConfig

    cfg = load_config(path)
    for name, spec in [("train", cfg["data"]["train"]), *cfg["data"]["benchmarks"].items()]:
        values = {k: v for k, v in spec.items() if v is not None and k in ("kind", "path", "n", "seed")}
        PrepareDataConfig(split=name, **values)
    TeacherSFTConfig(**cfg["model"], **cfg["teacher_sft"])
    TeacherCoTConfig(**cfg["teacher_cot"])
    for method in cfg["methods"]:
        if method != "cot_sft":
            DistillConfig(**{**cfg["distill"]["common"], **cfg["distill"].get(method, {}), "method": method})
    if cfg["model"]["name_or_path"]:
        ConvertModelConfig(src=cfg["model"]["name_or_path"], gguf_file=cfg["model"]["gguf_file"])
    assert to_flags(cfg["model"])   # the workflow can pass it on


@pytest.mark.parametrize("path", PROFILES, ids=[p.name for p in PROFILES])
def test_profile_header_says_what_how_and_how_long(path):
    header = "".join(l for l in path.read_text().splitlines(keepends=True) if l.startswith("#"))
    assert f"--configfile config/profiles/{path.name}" in header      # the exact launch command
    assert "Expected runtime" in header and "What it runs" in header
    cfg = load_config(path)
    assert cfg["run"] == path.stem                                   # results/<profile name>/


@pytest.mark.parametrize("path", PROFILES, ids=[p.name for p in PROFILES])
def test_profile_local_data_files_exist(path):
    cfg = load_config(path)
    # the profiles read real files from data/ (docs/scaling.md); here that is the datasets folder beside the repo
    data = ROOT / "data" if (ROOT / "data").exists() else ROOT.parent / "shared" / "datasets"
    if not data.exists():
        pytest.skip(f"{data} not available")
    for spec in [cfg["data"]["train"], *cfg["data"]["benchmarks"].values()]:
        if spec["path"] and is_local(spec["path"]):
            assert spec["path"].startswith("data/"), f"{path.name}: {spec['path']} is not under data/"
            assert (data / spec["path"].removeprefix("data/")).exists(), f"{path.name}: {spec['path']} not in {data}"
