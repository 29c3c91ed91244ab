"""lori.training.recipes.args: each method's typed knobs, the one place their defaults live."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from lori.config import RUNTIME_KNOBS, load_schema
from lori.training.recipes.args import ALL_KNOBS, ARGS, UNSET, CoconutArgs, IcotSIArgs, LoriArgs, recipe_args


def fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("method", ["codi", "coconut", "icot_si", "pause"])
def test_schema_defaults_of_each_baseline_block_are_its_args_defaults(method):
    """The schema fills distill.<method> with defaults; they must be the Args defaults (one truth)."""
    props = load_schema()["$defs"][method]["properties"]
    knobs = fields(ARGS[method])
    for key, spec in props.items():
        if key in knobs and "default" in spec:
            assert spec["default"] == knobs[key].default, f"{method}.{key}: schema {spec['default']!r} != Args"
    # every knob a user may set for the method is in its schema block (latent_steps: fixed for two of them)
    missing = set(knobs) - set(props) - {"latent_steps"}
    assert not missing, f"Args knobs missing from the schema's {method} block: {missing}"


def test_every_knob_is_a_sweep_variant_key():
    variant = load_schema()["$defs"]["variant"]["properties"]
    assert set(ALL_KNOBS) <= set(variant), set(ALL_KNOBS) - set(variant)
    lori_block = load_schema()["$defs"]["method"]["properties"]
    assert set(fields(LoriArgs)) <= set(lori_block)


def test_runtime_knobs_are_fields_of_the_training_configs():
    from lori.distill import DistillConfig
    from lori.teacher_sft import TeacherSFTConfig

    runtime = set(load_schema()["properties"]["runtime"]["properties"])
    for stage, cls in (("teacher_sft", TeacherSFTConfig), ("distill", DistillConfig)):
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(RUNTIME_KNOBS[stage]) <= names, stage
        # a runtime knob the dataclass has but the table forgets would silently never reach it
        assert (runtime & names) == set(RUNTIME_KNOBS[stage]), stage


def test_defaults_and_needs_targets():
    assert recipe_args({"method": "lori"}) == LoriArgs()
    no_cot = recipe_args({"method": "no_cot"})
    assert (no_cot.latent_steps, no_cot.alpha, no_cot.gamma, no_cot.needs_targets) == (0, 0.0, 0.0, False)
    pause = recipe_args({"method": "pause"})
    assert (pause.latent_steps, pause.feedback, pause.alpha, pause.gamma, pause.needs_targets) == (6, "pause", 0, 0, False)
    assert recipe_args({"method": "lori", "alpha": 0.0, "anchor_space": "full"}).needs_targets   # gamma still 1
    assert not recipe_args({"method": "lori", "alpha": 0.0, "gamma": 0.0}).needs_targets
    assert recipe_args({"method": "coconut", "max_stage": 2, "thoughts_per_step": 3, "steps": 1000}).latent_steps == 6


def test_non_knob_keys_are_ignored_and_unset_means_default():
    args = recipe_args({"method": "codi", "steps": 10, "lr": 1e-3, "init": "teacher", "distill_weight": UNSET})
    assert args.distill_weight == 1.0


def test_none_is_a_value_only_where_the_knob_admits_it():
    # removal_lambda: null turns smoothing off; it must not fall back to the default 4.0
    assert recipe_args({"method": "icot_si", "removal_lambda": None}).removal_lambda is None
    assert recipe_args({"method": "icot_si"}).removal_lambda == IcotSIArgs().removal_lambda == 4.0
    # latent_steps: null (old presets) keeps the method's default
    assert recipe_args({"method": "lori", "latent_steps": None}).latent_steps == 6


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as e:
        recipe_args({"method": "lori", "max_stage": 2, "remove_per_stage": 3, "alpha": -1.0})
    msg = str(e.value)
    assert "max_stage is a knob of coconut and sim_cot, not of method 'lori'" in msg
    assert "remove_per_stage is a knob of icot_si, not of method 'lori'" in msg
    assert "alpha, gamma and step_anchor must be >= 0" in msg
    with pytest.raises(ValueError, match=re.escape("unknown method 'cot' (one of lori, no_cot, codi, coconut, icot_si, pause, sim_cot, icot_kd)")):
        recipe_args({"method": "cot"})
    with pytest.raises(ValueError, match="steps .300. must exceed max_stage"):
        recipe_args({"method": "coconut", "steps_per_stage": 100}, steps=300)
    assert CoconutArgs().latent_steps == 6


def test_args_module_is_torch_free():
    """The Snakefile reads needs_targets while it builds the DAG, which must not load torch."""
    code = ("import sys; import lori.training.recipes.args, lori.config, lori.sweep, lori.lowrank.passes; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
