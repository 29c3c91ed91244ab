"""Tests for lori.config: schema validation with defaults, loud errors, stage CLIs."""
from __future__ import annotations

import copy
import dataclasses
import shlex

from pathlib import Path

import pytest
import yaml

from lori.config import (ConfigError, config_hash, load_config, load_schema, parse_stage_args,
                         to_flags, validate_config)
from lori.dump_hidden import DumpHiddenConfig
from lori.evaluate import EvaluateConfig
from lori.factorize import FactorizeConfig
from lori.report import ReportConfig
from lori.targets import TargetsConfig
from lori.teacher_cot import TeacherCoTConfig
from lori.training.loop import OptimConfig
from lori.training.recipes.args import LoriArgs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def errors_of(raw, mutate) -> str:
    cfg = copy.deepcopy(raw)
    mutate(cfg)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, "cfg.yaml")
    return str(e.value)


def parse(cls, argv):
    cfg, _ = parse_stage_args(cls, argv, "test", [])
    return cfg


# ---------------------------------------------------------------- load / validate
def test_default_config_loads_with_defaults(raw):
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg["run"] == "quickstart"
    assert cfg["methods"] == ["cot_sft", "no_cot", "lori"]
    assert cfg["factorize"] == {"rank_layer": 2, "rank_hidden": 16, "energy": None, "center": True,
                                "layer_scaling": "layer_rms", "chunk_tokens": 8192,
                                "method": "hosvd", "hooi_iters": 4, "shards": 1}
    # defaults filled for keys the file leaves out
    assert cfg["data"]["train"] == {"kind": "quickstart", "n": 10000, "path": None, "seed": None,
                                    "min_steps": None, "max_steps": None}
    assert cfg["data"]["benchmarks"]["longer"]["min_steps"] == 5
    assert cfg["data"]["quickstart"] == {"min_steps": 1, "max_steps": 4, "max_value": 10, "wrap": True}
    # `lori` is the method as described; `lori_steps` adds our stage curriculum and step anchors
    lori = cfg["distill"]["lori"]
    assert (lori["latent_steps"], lori["cot_stages"], lori["step_anchor"], lori["alpha"], lori["gamma"]) == (4, 0, 0, 1, 1)
    assert "lr" not in lori                        # the method as described: common's rate
    steps = cfg["sweep"]["lori_steps"]
    assert (steps["cot_stages"], steps["steps_per_stage"], steps["step_anchor"]) == (4, 300, 3.0)
    assert (steps["step_summary"], steps["lr"]) == ("result", 2e-3)
    assert "feedback" not in lori and LoriArgs().feedback == "projection"
    assert "report" in raw and cfg["report"]["title"] == "LoRi quickstart"


def test_minimal_config_fills_nested_defaults():
    cfg = validate_config({"run": "r", "methods": ["cot_sft"],
                           "data": {"train": {"kind": "quickstart"}, "benchmarks": {"t": {"kind": "quickstart"}}}})
    assert cfg["seed"] == 0 and cfg["threads"] == 2 and cfg["device"] == "auto"
    assert cfg["model"]["scratch"]["hidden_size"] == 128
    assert cfg["teacher_sft"]["steps"] == 1400 and cfg["teacher_sft"]["betas"] == [0.9, 0.98]
    assert cfg["distill"]["common"]["init"] == "teacher"
    assert cfg["data"]["quickstart"] == {"min_steps": 2, "max_steps": 4, "max_value": 99, "wrap": False}
    assert cfg["dump_hidden"]["layers"] == "all"
    assert cfg["evaluate"] == {"batch_size": 250, "max_new_tokens": 96, "thought_shuffle": True}
    assert cfg["seeds"] is None and cfg["sweep"] == {}


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


@pytest.mark.parametrize("mutate, key, fragment", [
    (lambda c: c["teacher_sft"].update(steps="abc"), "teacher_sft.steps", "'abc' is not of type 'integer'"),
    (lambda c: c.update(foo=1), "<top>", "'foo' was unexpected"),
    (lambda c: c["factorize"].update(rnak_layer=2), "factorize", "'rnak_layer' was unexpected"),
    (lambda c: c["factorize"].update(rank_layer=-1), "factorize.rank_layer", "-1 is less than the minimum of 1"),
    (lambda c: c["factorize"].update(energy=1.5), "factorize.energy", "1.5 is greater than the maximum of 1"),
    (lambda c: c["methods"].append("bogus"), "methods.3", "'bogus' is not one of"),
    (lambda c: c["distill"]["lori"].update(covariance="diag"), "distill.lori.covariance", "'diag'"),
    (lambda c: c["dump_hidden"].update(layers="every_k:0"), "dump_hidden.layers", "every_k:0"),
])
def test_invalid_values_name_the_key(raw, mutate, key, fragment):
    msg = errors_of(raw, mutate)
    assert msg.startswith("cfg.yaml: 1 config error(s):")
    line = [l for l in msg.splitlines() if l.strip().startswith(key + ":")]
    assert line, msg
    assert fragment in line[0]


def test_multiple_errors_reported_together(raw):
    def mutate(c):
        c["teacher_sft"]["steps"] = "abc"
        c["factorize"]["energy"] = 1.5
        c["factorize"]["rnak_layer"] = 3
    msg = errors_of(raw, mutate)
    assert "3 config error(s)" in msg
    assert "teacher_sft.steps:" in msg and "factorize.energy:" in msg and "'rnak_layer'" in msg


def test_seeds_from_the_command_line_become_integers(raw):
    """`snakemake --config 'seeds=[0,1,2]'` hands the items over as strings."""
    cfg = copy.deepcopy(raw)
    cfg["seeds"] = ["0", "1", " 2"]
    assert validate_config(cfg, "cfg.yaml")["seeds"] == [0, 1, 2]
    assert "seeds.0" in errors_of(raw, lambda c: c.update(seeds=["one"]))
    assert "seeds.0" in errors_of(raw, lambda c: c.update(seeds=["-1"]))


def test_nested_command_line_strings_take_the_schemas_types(raw):
    """`--config 'sweep={v: {method: coconut, lr: 2.0e-3}}'` hands nested scalars over as strings,
    and YAML reads `2e-3` as one: where the schema wants a number, bool or null they become one."""
    cfg = copy.deepcopy(raw)
    cfg["sweep"]["lr2"] = {"method": "coconut", "lr": "2.0e-3", "steps": "900"}
    cfg["distill"]["common"]["lr"] = "2e-3"
    cfg["factorize"].update(energy="null", center="false")
    cfg["run"] = "123"                                        # a string field keeps its string
    out = validate_config(cfg, "cfg.yaml")
    assert out["sweep"]["lr2"]["lr"] == 0.002 and out["sweep"]["lr2"]["steps"] == 900
    assert out["distill"]["common"]["lr"] == 0.002
    assert out["factorize"]["energy"] is None and out["factorize"]["center"] is False
    assert out["run"] == "123"
    # what does not spell its type is still rejected, by name
    assert "sweep.lr2.lr" in errors_of(raw, lambda c: c["sweep"].update(lr2={"method": "coconut", "lr": "fast"}))


@pytest.mark.parametrize("mutate, fragment", [
    (lambda c: c["data"]["quickstart"].update(min_steps=5), "data.train: min_steps 5 > max_steps 4"),
    (lambda c: (c["methods"].append("codi"), c["distill"].pop("codi")), "methods: 'codi' has no distill.codi section"),
    (lambda c: c["factorize"].update(rank_layer=None), "factorize: set rank_layer and rank_hidden, or energy"),
    (lambda c: c["data"]["benchmarks"].update(gsm={"kind": "gsm8k_aug"}), "data.gsm: kind 'gsm8k_aug' needs a path"),
])
def test_consistency_errors(raw, mutate, fragment):
    msg = errors_of(raw, mutate)
    assert "inconsistent config" in msg and fragment in msg


def test_adaptive_ranks_are_consistent(raw):
    cfg = copy.deepcopy(raw)
    cfg["factorize"].update(rank_layer=None, rank_hidden=None, energy=0.9)
    assert validate_config(cfg)["factorize"]["energy"] == 0.9


def test_benchmark_step_override_consistency(raw):
    msg = errors_of(raw, lambda c: c["data"]["benchmarks"]["longer"].update(min_steps=6, max_steps=5))
    assert "data.longer" in msg


def test_config_hash_stable_and_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 16


# ---------------------------------------------------------------- stage CLIs
@pytest.mark.parametrize("cfg", [
    FactorizeConfig(),
    FactorizeConfig(rank_layer=None, rank_hidden=None, energy=0.95, center=False, layer_scaling="none",
                    chunk_tokens=7),
    FactorizeConfig(rank_layer=3, rank_hidden=None, energy=0.5, center=True),
])
def test_to_flags_round_trip_factorize(cfg):
    flags = to_flags(dataclasses.asdict(cfg))
    back = parse(FactorizeConfig, shlex.split(flags))
    assert back == cfg
    assert type(back.center) is bool and type(back.chunk_tokens) is int


def test_to_flags_text():
    assert to_flags({"energy": None, "center": False, "rank_layer": 2, "betas": [0.9, 0.98], "title": "a b"}) == \
        "--betas '[0.9, 0.98]' --center false --energy none --rank-layer 2 --title 'a b'"   # sorted: canonical


def test_to_flags_list_values_round_trip():
    back = parse(OptimConfig, shlex.split(to_flags({"betas": [0.5, 0.75], "steps": 3, "lr": 1e-4})))
    assert list(back.betas) == [0.5, 0.75]
    assert back.steps == 3 and back.lr == 1e-4


def test_to_flags_tuple_round_trip():
    back = parse(OptimConfig, shlex.split(to_flags(dataclasses.asdict(OptimConfig(betas=(0.5, 0.75))))))
    assert tuple(back.betas) == (0.5, 0.75)


def test_to_flags_layer_list_round_trip():
    back = parse(DumpHiddenConfig, shlex.split(to_flags({"layers": [1, 2, 3]})))
    assert back.layers == [1, 2, 3]


def test_layer_spec_string_round_trip():
    assert parse(DumpHiddenConfig, shlex.split(to_flags({"layers": "every_k:2"}))).layers == "every_k:2"


@pytest.mark.parametrize("argv, center", [(["--center"], True), (["--center", "false"], False),
                                          (["--center", "yes"], True), (["--center", "0"], False), ([], True)])
def test_bool_flags(argv, center):
    assert parse(FactorizeConfig, argv).center is center


def test_bare_bool_flag_before_another_flag():
    cfg = parse(FactorizeConfig, ["--center", "--rank-layer", "3"])
    assert cfg.center is True and cfg.rank_layer == 3


@pytest.mark.parametrize("argv", [["--rank-layer", "abc"], ["--center", "maybe"], ["--energy", "x"],
                                  ["--no-such-flag", "1"]])
def test_bad_cli_values_exit(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(FactorizeConfig, argv)
    assert e.value.code == 2


def test_post_init_errors_become_config_errors():
    with pytest.raises(ConfigError, match="rank_layer must be >= 1, got 0"):
        parse(FactorizeConfig, ["--rank-layer", "0"])
    with pytest.raises(ConfigError, match=r"energy must be in \(0, 1\], got 1.5"):
        parse(FactorizeConfig, ["--energy", "1.5"])


def test_config_file_section_then_cli_override(tmp_path, raw):
    cfg = copy.deepcopy(raw)
    cfg["factorize"]["rank_hidden"] = 5
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out, _ = parse_stage_args(FactorizeConfig, ["--config", str(p), "--rank-layer", "3"], "t", [], stage="factorize")
    assert (out.rank_layer, out.rank_hidden, out.layer_scaling) == (3, 5, "layer_rms")


def test_required_path_flags():
    _, ns = parse_stage_args(FactorizeConfig, ["--out", "o.zarr"], "t", [("--out", "output"), ("--extra", "(optional) x")])
    assert ns.out == "o.zarr" and ns.extra is None
    with pytest.raises(SystemExit):
        parse_stage_args(FactorizeConfig, [], "t", [("--out", "output")])


# ---------------------------------------------------------------- one place for defaults
@pytest.mark.parametrize("section, cls", [
    ("factorize", FactorizeConfig),
    ("dump_hidden", DumpHiddenConfig),
    ("teacher_cot", TeacherCoTConfig),
    ("targets", TargetsConfig),
    ("evaluate", EvaluateConfig),
    ("report", ReportConfig),
])
def test_schema_defaults_match_dataclass_defaults(section, cls):
    props = load_schema()["properties"][section]["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert props, section
    for key, spec in props.items():
        assert key in fields, f"schema {section}.{key} has no {cls.__name__} field"
        assert "default" in spec, f"schema {section}.{key} has no default"
        assert spec["default"] == fields[key].default, f"{section}.{key}: schema {spec['default']!r} != " \
                                                       f"{cls.__name__} {fields[key].default!r}"


# ---------------------------------------------------------------- stage_args: one config -> stage mapping
PROFILES = [DEFAULT_CONFIG, *sorted((ROOT / "config" / "profiles").glob("*.yaml"))]


def stage_configs():
    from lori.convert_model import ConvertModelConfig
    from lori.distill import DistillConfig
    from lori.prepare_data import PrepareDataConfig
    from lori.teacher_sft import TeacherSFTConfig

    return {"prepare_data": PrepareDataConfig, "convert_model": ConvertModelConfig, "teacher_sft": TeacherSFTConfig,
            "teacher_cot": TeacherCoTConfig, "dump_hidden": DumpHiddenConfig, "factorize": FactorizeConfig,
            "targets": TargetsConfig, "distill": DistillConfig, "evaluate": EvaluateConfig, "report": ReportConfig}


def jobs(config: dict):
    """(stage, job selector) of every job kind a run has, as the rules pick them."""
    from lori.sweep import student_runs

    for stage in ("teacher_sft", "teacher_cot", "dump_hidden", "factorize", "targets", "evaluate", "report"):
        yield stage, {}
    if config["model"]["name_or_path"]:    # the convert_model rule converts a pretrained model once
        yield "convert_model", {}
    for split in ["train", *config["data"]["benchmarks"], *(["validation"] if config["data"]["validation"] else [])]:
        yield "prepare_data", {"split": split}
    for student in student_runs(config):
        yield "distill", {"student": student}


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_rule_flags_and_the_config_path_give_a_stage_the_same_knobs(profile, monkeypatch):
    """What a rule passes (to_flags(stage_args(...)) + runtime flags) and what the stage reads with
    --config (and --split / --student) build the same config dataclass: one mapping, two paths."""
    import lori.config
    from lori.config import MODEL_STAGES, runtime_args, stage_args, to_flags

    config = load_config(profile)
    # the --config path loads the file per job; validating it once keeps the test fast
    monkeypatch.setattr(lori.config, "load_config", lambda path: copy.deepcopy(config))
    classes = stage_configs()
    for stage, job in jobs(config):
        cls = classes[stage]
        runtime = runtime_args(config, job.get("student")) if stage in MODEL_STAGES else {}
        flags = shlex.split(to_flags({**stage_args(config, stage, **job), **runtime}))
        threads = ["--threads", str(config["threads"])] if stage in MODEL_STAGES else []
        by_rule, _ = parse_stage_args(cls, flags + threads, "t", [])
        select = {"prepare_data": ["--split", job.get("split", "")], "distill": ["--student", job.get("student", "")]}
        paths = [("--student", "(optional) x")] if stage == "distill" else []
        by_config, _ = parse_stage_args(cls, ["--config", str(profile), *select.get(stage, [])], "t", paths, stage)
        assert by_rule == by_config, f"{profile.name}: {stage} {job}"


def test_wrap_reaches_prepare_data_only_when_on(raw):
    """data.quickstart.wrap off adds no flag (runs made before the knob keep their cached data jobs)."""
    from lori.config import stage_args, to_flags

    config = validate_config(copy.deepcopy(raw), "t")
    config["data"]["quickstart"]["wrap"] = False
    assert "wrap" not in stage_args(config, "prepare_data", split="test")
    config["data"]["quickstart"]["wrap"] = True
    assert stage_args(config, "prepare_data", split="test")["wrap"] is True
    assert "--wrap true" in to_flags(stage_args(config, "prepare_data", split="train"))


def test_length_curriculum_reaches_distill_only_when_on(raw):
    """distill.common.length_curriculum 0 adds no flag (students trained before the knob stay cached);
    a method block or a variant can turn it on for its own students."""
    from lori.config import stage_args, to_flags

    config = validate_config(copy.deepcopy(raw), "t")
    assert config["distill"]["common"]["length_curriculum"] == 0
    assert "length_curriculum" not in stage_args(config, "distill", student="lori")
    config["distill"]["lori"] = {**config["distill"].get("lori", {}), "length_curriculum": 250}
    assert "--length-curriculum 250" in to_flags(stage_args(config, "distill", student="lori"))
    assert "length_curriculum" not in stage_args(config, "distill", student="no_cot")


def test_stage_args_knows_every_stage_and_refuses_others(raw):
    from lori.config import STAGES, stage_args

    config = validate_config(copy.deepcopy(raw), "t")
    assert set(STAGES) == set(stage_configs())
    with pytest.raises(ConfigError, match="unknown stage 'distil'"):
        stage_args(config, "distil")
    # a rank variant's factorize job: the variant's ranks, never sharded
    assert stage_args({**config, "factorize": {**config["factorize"], "shards": 4}}, "factorize", ranks="rl1-rh8") \
        == {**{k: v for k, v in config["factorize"].items() if k != "shards"}, "rank_layer": 1, "rank_hidden": 8}
