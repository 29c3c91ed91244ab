# Shared helpers: config validation (before any job), output paths, stage flags.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent))  # the lori package, even when not installed

import re

# torch-free imports only: the DAG builds without loading torch or any stage module
from lori.config import VALIDATION, ConfigError, runtime_args, stage_args, to_flags, validate_config, validates
from lori.lowrank.passes import plan as factorize_plan
from lori.sweep import LOWRANK_TAG, factor_overrides, lowrank_tag, matched_inputs, student_runs
from lori.training.recipes.args import recipe_args


def config_source():
    """Where the config came from, for error messages: the --configfile(s), or the default file."""
    return " + ".join(str(f) for f in workflow.overwrite_configfiles) or "config/config.yaml"


try:
    validate_config(config, config_source())
except ConfigError as e:
    # the user's config to fix: one error line naming the file, no Snakemake traceback, no job
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

R = f"results/{config['run']}"
# every rule's software (used with --sdm conda; rules are otherwise run in the current environment)
CONDA_ENV = "../envs/lori.yaml"
METHODS = list(config["methods"])
# every student trained: methods x sweep variants x seeds (lori.sweep); names are
# <variant> for the first seed, <variant>-seed<k> for the others
STUDENT_RUNS = student_runs(config)
STUDENTS = list(STUDENT_RUNS)
EVALUATED = ["cot_sft"] * ("cot_sft" in METHODS) + STUDENTS
BENCHES = list(config["data"]["benchmarks"])
# data.validation (optional): the split the training stages evaluate on every eval_every steps
VALIDATION_SPLIT = [VALIDATION] if config["data"]["validation"] else []
SPLITS = ["train", *BENCHES, *VALIDATION_SPLIT]


wildcard_constraints:
    split="|".join(SPLITS),
    bench="|".join(BENCHES),
    method="|".join(map(re.escape, EVALUATED)),


def args(stage, **job):
    """A stage job's knobs as flags: the one config -> stage mapping (lori.config.stage_args)."""
    return to_flags(stage_args(config, stage, **job))


def runtime_flags(student=None):
    """Seed and device for every model stage (threads come from the rule's `threads`)."""
    return to_flags(runtime_args(config, student))


def trainer(module):
    """How a training stage (or dump_hidden) is launched: plain Python, or torchrun with one process per GPU."""
    if config["gpus"] > 1:
        return f"torchrun --standalone --nproc_per_node {config['gpus']} --module lori.{module}"
    return f"python -m lori.{module}"


def needs_targets(student):
    """Whether a student reads the dumped teacher's targets and factors (LoRi with alpha or gamma > 0)."""
    return recipe_args(stage_args(config, "distill", student=student)).needs_targets


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


def split_excludes(split):
    """Splits whose questions a split excludes: benchmarks exclude train; the validation split
    excludes train and every benchmark (so it never overlaps what the report tests on)."""
    if split == "train":
        return []
    others = BENCHES if split in VALIDATION_SPLIT else []
    return [f"{R}/data/{s}.jsonl" for s in ["train", *others]]


def validation_input(stage, student=None):
    """The validation records a training job evaluates on ([] when it does not validate)."""
    return [f"{R}/data/{VALIDATION}.jsonl"] if validates(config, stage, student) else []


def training_args(stage, student=None):
    """A training job's knobs as flags, plus `--val <records>` when it validates. One param, not
    derived from `input`: Snakemake reruns a job when a non-derived param changes; without
    validation the text is exactly `args(...)`, so existing runs stay cached."""
    val = validation_input(stage, student)
    return args(stage, student=student) + (f" --val {val[0]}" if val else "")


def get_final_output():
    return [f"{R}/report/report.md", f"{R}/report/report.html"]


# ---------------------------------------------------------------- convert_model
def base_model_source():
    """A local model file or folder is an input (edits rerun the conversion); a hub name or pkg: is a param."""
    src = config["model"]["name_or_path"]
    return [src] if src and Path(src).exists() else []


# ---------------------------------------------------------------- lowrank: dump shards, factorize passes
FACTORIZE_SHELL = "python -m lori.factorize --hidden {input.hidden} --out {output} {params.args} > {log} 2>&1"
TARGETS_SHELL = ("python -m lori.targets --teacher {input.teacher} --records {input.records} --factors {input.factors} "
                 "--out {output} {params.args} {params.runtime} --threads {threads} > {log} 2>&1")
DUMP_SHARDS = config["dump_hidden"]["shards"]
DUMP_GPUS = 0 if config["device"] == "cpu" else config["gpus"]
DUMP_PARTS = [f"{R}/hidden/shards/calib.part{i}.zarr" for i in range(DUMP_SHARDS)]
# unsharded, `shards` is left out of the flags (it is 1, the CLI default): the params text, and so
# Snakemake's rerun decision, stays that of earlier versions
DUMP_ARGS = args("dump_hidden")

# factorize passes (lori.lowrank.passes.plan: moments, grams, hooi1.., diagnostics)
FACTORIZE_STEPS = factorize_plan(**{k: config["factorize"][k] for k in ("method", "hooi_iters", "center", "layer_scaling")})
FACTORIZE_SHARDS = config["factorize"]["shards"]
SHARD_DIR = f"{R}/lowrank/shards"


def factorize_state(step):
    """The gather output a pass starts from ([] for the first pass)."""
    i = FACTORIZE_STEPS.index(step)
    return [f"{SHARD_DIR}/{FACTORIZE_STEPS[i - 1]}.state.npz"] if i else []


def factorize_parts(step):
    return [f"{SHARD_DIR}/{step}.part{i}.npz" for i in range(FACTORIZE_SHARDS)]


def factorize_state_flag(wildcards, input):
    return f"--state {input.state}" if input.state else ""


# ---------------------------------------------------------------- students
def distill_inputs(wc):
    inputs = {"teacher": f"{R}/teacher", "records": f"{R}/teacher_cot/train.jsonl"}
    if validation_input("distill", wc.method):
        inputs.update(val=validation_input("distill", wc.method)[0])
    if needs_targets(wc.method):
        factors, targets = lowrank_paths(wc.method)
        inputs.update(targets=targets, factors=factors)
    match = matched(wc.method)
    if match:
        inputs.update(match_ref=f"{R}/students/{match['ref']}_metrics.jsonl",
                      match_base=f"{R}/students/{match['base']}_metrics.jsonl")
    return inputs


def match_flags(wc, input):
    match = matched(wc.method)
    if not match:
        return ""
    return f"--match-ref {input.match_ref} --match-base {input.match_base} --match-by {match['by']}"


# ---------------------------------------------------------------- report
THOUGHT_BENCH = "test" if "test" in BENCHES else BENCHES[0]


def figure(name, category):
    return report(f"{R}/report/{name}.png", caption=f"../report/{name}.rst", category=category,
                  labels={"figure": name.replace("_", " ")})
