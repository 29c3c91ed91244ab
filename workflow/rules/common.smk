# Shared helpers: config validation (before any job), output paths, stage flags.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent))  # the lori package, even when not installed

import dataclasses
import re

from lori.config import load_schema, to_flags, validate_config
from lori.distill import DistillConfig
from lori.sweep import LOWRANK_TAG, factor_overrides, lowrank_tag, matched_inputs, parse_lowrank_tag, student_config, student_runs
from lori.teacher_sft import TeacherSFTConfig

validate_config(config, "config")

R = f"results/{config['run']}"
METHODS = list(config["methods"])
# every student trained: methods x sweep variants x seeds (lori.sweep); names are
# <variant> for the first seed, <variant>-seed<k> for the others
STUDENT_RUNS = student_runs(config)
STUDENTS = list(STUDENT_RUNS)
EVALUATED = ["cot_sft"] * ("cot_sft" in METHODS) + STUDENTS
BENCHES = list(config["data"]["benchmarks"])
SPLITS = ["train", *BENCHES]


wildcard_constraints:
    split="|".join(SPLITS),
    bench="|".join(BENCHES),
    method="|".join(map(re.escape, EVALUATED)),


def runtime_flags(seed=None):
    """Seed and device for every model stage (threads come from the rule's `threads`)."""
    return to_flags({"seed": config["seed"] if seed is None else seed, "device": config["device"]})


def trainer(module):
    """How a training stage (or dump_hidden) is launched: plain Python, or torchrun with one process per GPU."""
    if config["gpus"] > 1:
        return f"torchrun --standalone --nproc_per_node {config['gpus']} --module lori.{module}"
    return f"python -m lori.{module}"


def training_runtime(cls):
    """config.runtime knobs a training stage's config dataclass takes, only those set away from
    their defaults: the default adds no flags, so it leaves existing training outputs cached."""
    defaults = load_schema()["properties"]["runtime"]["properties"]
    fields = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in config["runtime"].items() if k in fields and v != defaults[k]["default"]}


def split_spec(split):
    """A split's dataset spec, merged with the generator settings (only what affects it)."""
    spec = config["data"]["train"] if split == "train" else config["data"]["benchmarks"][split]
    values = {k: v for k, v in spec.items() if v is not None}
    if spec["kind"] == "quickstart":
        values = {**config["data"]["quickstart"], "global_seed": config["seed"], **values}
    return {"split": split, **values}


def method_config(student):
    """distill.common + distill.<method> + the variant's overrides: exactly the knobs of one student
    (+ runtime knobs set away from their defaults)."""
    return {**student_config(config, student), **training_runtime(DistillConfig)}


def student_seed(student):
    return STUDENT_RUNS[student][1]


def needs_targets(student):
    return DistillConfig(**method_config(student)).needs_targets


def lowrank_paths(student):
    """(factors, targets) a LoRi student reads: the run's, or its rank variant's own (lori.sweep.lowrank_tag)."""
    tag = lowrank_tag(factor_overrides(config, student))
    suffix = f"-{tag}" if tag else ""
    return f"{R}/lowrank/factors{suffix}.zarr", f"{R}/targets/train{suffix}.zarr"


def matched(student):
    """Compute-matched student: {ref, base, by} student names whose metrics set its steps; else None."""
    return matched_inputs(config, student)


def model_dir(method):
    return f"{R}/teacher" if method == "cot_sft" else f"{R}/students/{method}"


def get_final_output():
    return [f"{R}/report/report.md", f"{R}/report/report.html"]
