"""Config: one JSON schema, defaults filled in, loud errors, and stage CLIs from dataclasses.

The schema (``lori/schemas/config.schema.yaml``, shipped inside the package; the workflow's
``workflow/schemas/config.schema.yaml`` links to it) is the single source of defaults for the
pipeline config; the Snakefile and every stage's ``--config`` path validate through
:func:`validate_config`. :func:`stage_args` is the one mapping from a pipeline config to one
stage job's knobs: each rule turns it into flags (:func:`to_flags`) and each stage's ``--config``
path reads the same dict, so a stage runs the same inside Snakemake and by hand. Each stage has a
``@dataclass`` of its own knobs; :func:`parse_stage_args` turns it into a CLI
(``--rank-layer 2 --center``) and checks types.

Torch-free on purpose: the Snakefile imports this module while it builds the DAG.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import shlex
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from lori.sweep import check_sweep, parse_lowrank_tag, student_config, student_runs

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
#: config.runtime keys each training stage takes (its config dataclass has these fields; a test checks)
RUNTIME_KNOBS = {"teacher_sft": ("compile", "gradient_checkpointing", "parallel", "grad_accum", "tensorboard",
                                 "precision"),
                 "distill": ("compile", "parallel", "grad_accum", "tensorboard", "precision")}


class ConfigError(ValueError):
    """Invalid configuration; the message names every offending key."""


def load_schema() -> dict:
    if not SCHEMA_PATH.exists():
        raise ConfigError(f"schema not found at {SCHEMA_PATH} (a broken install: reinstall lori)")
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _validator_with_defaults():
    import jsonschema   # here, not at the top: a stage's --help never validates, and this import is slow

    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = json.loads(json.dumps(sub["default"]))
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate ``config`` in place against the schema, fill defaults, return it.

    All problems are reported together in one :class:`ConfigError`.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(config).__name__}")
    schema = load_schema()
    _coerce_command_line(config, schema)
    validator = _validator_with_defaults()(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors]
        raise ConfigError(f"{source}: {len(errors)} config error(s):\n" + "\n".join(lines))
    # second pass: defaults filled during the first pass may hide nested defaults
    validator.validate(config)
    _check_consistency(config, source)
    return config


def _coerce_command_line(config: dict, schema: dict) -> None:
    """Strings where the schema wants a number, a bool or null become one if they spell it.

    ``snakemake --config 'seeds=[0,1,2]'`` or ``--config 'sweep={v: {method: coconut, lr: 2e-3}}'``
    hands nested values over as strings (Snakemake reads them with YAML's base loader), and YAML
    itself reads ``2e-3`` (no dot) as a string. Anything that does not spell its type is left for
    the schema to reject; where a string is allowed it stays one."""
    _coerce_node(config, schema, schema)


def _scalar(text: str, kinds: list[str]) -> Any:
    word = text.strip()
    for kind in kinds:
        if kind == "integer" and word.lstrip("+-").isdecimal():
            return int(word)
        if kind == "number":
            try:
                return int(word) if word.lstrip("+-").isdecimal() else float(word)
            except ValueError:
                pass
        if kind == "boolean" and word.lower() in ("true", "false"):
            return word.lower() == "true"
        if kind == "null" and word.lower() in ("null", "~", "none"):
            return None
    return text


def _coerce_node(value: Any, node: Any, schema: dict) -> Any:
    node = _resolve(schema, node)
    if not isinstance(node, dict):
        return value
    if isinstance(value, dict):
        props, extra = node.get("properties", {}), node.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[key] = _coerce_node(item, sub, schema)
        return value
    if isinstance(value, list):
        items = node.get("items")
        return [_coerce_node(v, items, schema) for v in value] if isinstance(items, dict) else value
    if not isinstance(value, str):
        return value
    kinds = node.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    for alternative in node.get("anyOf", []) + node.get("oneOf", []):
        alt = _resolve(schema, alternative).get("type", [])
        kinds += [alt] if isinstance(alt, str) else list(alt)
    if not kinds or "string" in kinds:
        return value
    return _scalar(value, kinds)


def _check_consistency(config: dict, source: str) -> None:
    problems = []
    qs = config["data"].get("quickstart", {})
    splits = [("train", config["data"]["train"]), *config["data"]["benchmarks"].items()]
    if config["data"].get("validation"):
        splits.append((VALIDATION, config["data"]["validation"]))
        if VALIDATION in config["data"]["benchmarks"]:
            problems.append(f"data.benchmarks.{VALIDATION}: the name is data.validation's split; rename the benchmark")
    else:
        problems += [f"{section}.eval_every: {every} needs a validation split (data.validation)"
                     for section, every in (("teacher_sft", config["teacher_sft"].get("eval_every", 0)),
                                            ("distill.common", config["distill"]["common"].get("eval_every", 0)))
                     if every]
    for name, spec in splits:
        if spec["kind"] == "quickstart":
            lo, hi = spec.get("min_steps") or qs.get("min_steps", 2), spec.get("max_steps") or qs.get("max_steps", 4)
            if lo > hi:
                problems.append(f"data.{name}: min_steps {lo} > max_steps {hi}")
    for m in config["methods"]:
        if m != "cot_sft" and m not in config.get("distill", {}):
            problems.append(f"methods: '{m}' has no distill.{m} section")
    problems += check_sweep(config)
    f = config.get("factorize", {})
    if (f.get("rank_layer") is None or f.get("rank_hidden") is None) and f.get("energy") is None:
        problems.append("factorize: set rank_layer and rank_hidden, or energy for adaptive ranks")
    for name, spec in splits:
        if spec["kind"] != "quickstart" and not spec.get("path"):
            problems.append(f"data.{name}: kind '{spec['kind']}' needs a path")
    if problems:
        raise ConfigError(f"{source}: inconsistent config:\n" + "\n".join(f"  {p}" for p in problems))


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return validate_config(config, str(path))


# ---------------------------------------------------------------- config -> one stage job
STAGES = ("prepare_data", "convert_model", "teacher_sft", "teacher_cot", "dump_hidden", "factorize", "targets",
          "distill", "evaluate", "report")
#: stages that run a model: they also take seed, device (:func:`runtime_args`) and threads
MODEL_STAGES = ("teacher_sft", "teacher_cot", "dump_hidden", "targets", "distill", "evaluate")
#: the split name (data/<split>.jsonl, record ids) of ``data.validation``
VALIDATION = "validation"


def split_spec(config: dict, split: str) -> dict:
    """A data split's spec, merged with the generator settings (only what affects that split)."""
    data = config["data"]
    if split == "train":
        spec = data["train"]
    elif split == VALIDATION and data.get("validation"):
        spec = data["validation"]
    else:
        spec = data["benchmarks"][split]
    values = {k: v for k, v in spec.items() if v is not None}
    if spec["kind"] == "quickstart":
        values = {**config["data"]["quickstart"], "global_seed": config["seed"], **values}
        if not values.get("wrap"):
            values.pop("wrap", None)   # no flag when off: existing runs keep their cached data jobs
    return {"split": split, **values}


def training_runtime(config: dict, stage: str) -> dict:
    """config.runtime knobs a training stage takes, only those set away from their defaults: the
    defaults add no flags, so turning a knob on and off again leaves trained outputs cached."""
    defaults = load_schema()["properties"]["runtime"]["properties"]
    return {k: v for k, v in config["runtime"].items()
            if k in RUNTIME_KNOBS.get(stage, ()) and v != defaults[k]["default"]}


def lora_args(config: dict, stage: str) -> dict:
    """``{"lora": {rank, alpha, dropout, target_modules}}`` when ``lora.<stage>`` is on, else {} (no
    flag: a run without LoRA keeps the commands, and so the cached outputs, it always had)."""
    lora = config["lora"]
    return {"lora": {k: lora[k] for k in ("rank", "alpha", "dropout", "target_modules")}} if lora[stage] else {}


def with_validation(config: dict, values: dict) -> dict:
    """A training stage's knobs with validation during training: ``eval_every`` plus the evaluate
    stage's decoding knobs when the run has ``data.validation`` and ``eval_every > 0``; otherwise
    none of them, so a run without validation passes no new flag (its commands, and so its cached
    outputs, stay those of earlier versions)."""
    every = values.pop("eval_every", 0)
    if config["data"].get("validation") and every:
        values.update(eval_every=every, val_batch_size=config["evaluate"]["batch_size"],
                      val_max_new_tokens=config["evaluate"]["max_new_tokens"])
    return values


def validates(config: dict, stage: str, student: str | None = None) -> bool:
    """Whether a training job (teacher_sft, or distill of ``student``) evaluates on the validation split."""
    return "eval_every" in stage_args(config, stage, student=student)


def stage_args(config: dict, stage: str, *, split: str | None = None, student: str | None = None,
               ranks: str | None = None) -> dict:
    """The knobs of one job of ``stage`` from a validated pipeline config.

    The single config -> stage mapping: every rule passes ``to_flags(stage_args(...))`` and every
    stage's ``--config`` path reads the same dict. ``split`` (prepare_data: which data split),
    ``student`` (distill: a method, sweep variant or ``<variant>-seed<k>``) and ``ranks``
    (factorize: a rank variant's tag, e.g. ``rl1-rh8``) pick the job. Seed, device and threads
    are not knobs of a stage: see :func:`runtime_args`. Validation during training adds its knobs
    to teacher_sft and distill only when the run turns it on (:func:`with_validation`).
    """
    if stage == "prepare_data":
        return split_spec(config, split or "train")
    if stage == "convert_model":
        return {"src": config["model"]["name_or_path"], "gguf_file": config["model"]["gguf_file"]}
    if stage == "teacher_sft":
        return with_validation(config, {**config["model"], **config["teacher_sft"], **training_runtime(config, stage),
                                        **lora_args(config, stage)})
    if stage == "distill":
        values = student_config(config, student or "lori")
        if not values.get("length_curriculum"):
            values.pop("length_curriculum", None)   # no flag when off: cached students stay cached
        return with_validation(config, {**values, **training_runtime(config, stage), **lora_args(config, stage)})
    if stage == "dump_hidden":
        # shards: 1 adds no flag, so an unsharded dump's command is the one it always was (cached)
        return {k: v for k, v in config["dump_hidden"].items() if k != "shards" or v != 1}
    if stage == "factorize":
        if ranks:   # a rank variant's own factors: one job, never sharded
            return {**{k: v for k, v in config["factorize"].items() if k != "shards"}, **parse_lowrank_tag(ranks)}
        return dict(config["factorize"])
    if stage == "report":
        report = {**config["report"], "run": config["run"], "sweep": config["sweep"]}
        if not report.get("attribution"):
            report.pop("attribution", None)     # no flag when off: existing runs' reports stay cached
        return report
    if stage in ("teacher_cot", "targets", "evaluate"):
        return dict(config[stage])
    raise ConfigError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")


def runtime_args(config: dict, student: str | None = None) -> dict:
    """Seed and device of a model stage's job; a student's seed is its own (``seeds:``)."""
    seed = student_runs(config)[student][1] if student else config["seed"]
    return {"seed": seed, "device": config["device"]}


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (stored in artifact attrs for provenance)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- stage CLIs
T = TypeVar("T")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _bool(s: str) -> bool:
    low = s.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def _converter(tp: Any):
    base, optional = _strip_optional(tp)
    origin = typing.get_origin(base) or base

    def convert(s: str):
        if optional and s.lower() in ("none", "null"):
            return None
        if base is bool:
            return _bool(s)
        if base in (int, float, str):
            try:
                return base(s)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {s!r}") from None
        if origin in (list, dict, tuple) or base is typing.Any or typing.get_origin(base) in (typing.Union, types.UnionType):
            try:
                return yaml.safe_load(s)
            except yaml.YAMLError:
                raise argparse.ArgumentTypeError(f"expected YAML/JSON, got {s!r}") from None
        return s

    convert.__name__ = getattr(base, "__name__", "value")
    return convert, base is bool


def _resolve(schema: dict, node: dict) -> dict:
    """``node`` with its ``$ref`` merged in (the node's own keys win, e.g. a section's default)."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _schema_keys(schema: dict) -> dict[str, list[tuple[str, dict]]]:
    """Every property of the schema by name: ``[(dotted path, resolved subschema), ...]``."""
    found: dict[str, list[tuple[str, dict]]] = {}

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        for name, sub in (node.get("properties") or {}).items():
            sub = _resolve(schema, sub)
            found.setdefault(name, []).append((f"{path}.{name}".lstrip("."), sub))
            walk(sub, f"{path}.{name}")
        for name, sub in (node.get("$defs") or {}).items():
            walk(_resolve(schema, sub), f"$defs.{name}")

    walk(schema, "")
    return found


@functools.lru_cache(maxsize=1)
def _help_index() -> dict[str, list[tuple[str, dict]]]:
    """:func:`_schema_keys` of the shipped schema, parsed once per process: a stage's ``--help``
    asks it for every flag, and parsing the YAML for each one made ``lori distill --help`` take seconds."""
    return _schema_keys(load_schema())


# where a stage's flags live in the config when not under its own section (stage_args maps them)
_HELP_SECTIONS = {"prepare_data": ("$defs.dataset", "data.quickstart"), "convert_model": ("model",),
                  "teacher_sft": ("model", "runtime"), "distill": ("distill.common", "$defs.method", "$defs.codi",
                                                                   "$defs.coconut", "$defs.icot_si", "$defs.icot_kd", "$defs.pause",
                                                                   "$defs.sim_cot",
                                                                   "$defs.variant", "runtime")}
_ALIASES = {("convert_model", "src"): "name_or_path"}     # stage_args renames these config keys


def schema_help(stage: str | None, name: str) -> tuple[str, list | None]:
    """``(description, enum)`` of the config key behind flag ``name`` of ``stage``: its entry in the
    stage's own section(s), else the top-level key, else the only entry of that name. Never a
    same-named key of another section (``seed`` of a dataset is not the run's seed)."""
    entries = _help_index().get(_ALIASES.get((stage, name), name), [])
    sections = (stage or "", *_HELP_SECTIONS.get(stage or "", ()))

    def rank(entry: tuple[str, dict]) -> int:
        path = entry[0]
        return next((i for i, s in enumerate(sections) if s and path.startswith(s + ".")),
                    len(sections) if "." not in path else len(sections) + 1)

    entries = sorted(entries, key=rank)
    if not entries or (rank(entries[0]) > len(sections) and len(entries) > 1):
        return "", None
    best = entries[0][1]
    return " ".join(best.get("description", "").split()), best.get("enum")


def _values_text(tp: Any, enum: list | None) -> str:
    """The values a flag takes, for its help: the schema's enum, a Literal's, or the type."""
    base, optional = _strip_optional(tp)
    if enum is None and typing.get_origin(base) is typing.Literal:
        enum = list(typing.get_args(base))
    if enum is not None:
        text = " | ".join(map(str, enum))
    elif base is bool:
        text = "true | false"
    elif base in (int, float, str):
        text = base.__name__
    else:
        text = "YAML/JSON"
    return text + (" | none" if optional and "none" not in text else "")


def value_text(value: Any) -> str:
    """A default as a flag would spell it: ``none``, ``true``, ``[0.9, 0.98]``, ``0.001``."""
    if value is None:
        return "none"
    return json.dumps(value) if isinstance(value, (list, dict, tuple, bool)) else str(value)


def _default_text(f: dataclasses.Field) -> str:
    if "default_text" in f.metadata:       # e.g. distill's method knobs: each method's own default
        return f.metadata["default_text"]
    if f.default is not dataclasses.MISSING:
        return value_text(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return value_text(f.default_factory())
    return "required"


def field_help(stage: str | None, f: dataclasses.Field, tp: Any) -> str:
    """One line for a knob's flag: the schema's description, its values and its default."""
    description, enum = schema_help(stage, f.name)
    description = description or f.metadata.get("help", "")
    values = f"{_values_text(tp, enum)}; default: {_default_text(f)}"
    return (f"{description} ({values})" if description else values).replace("%", "%%")   # argparse formats help


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, stage: str | None = None) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        conv, is_bool = _converter(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        kw: dict = {"dest": f.name, "type": conv, "default": argparse.SUPPRESS, "help": field_help(stage, f, hints[f.name])}
        if is_bool:
            kw.update(nargs="?", const=True)
        parser.add_argument(flag, **kw)


def build_dataclass(cls: type[T], values: dict, source: str) -> T:
    """Build ``cls`` from a dict, rejecting unknown keys (all listed at once)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from None


def config_section(config: dict, stage: str, ns: argparse.Namespace) -> dict:
    """A stage's values from a full config file (its ``--config`` path): the knobs its rule passes
    (:func:`stage_args`), plus seed, device and threads for a model stage."""
    student = getattr(ns, "student", None) or getattr(ns, "method", None)
    if stage == "distill" and student not in student_runs(config):
        # a method this run does not train: distill.common + that method's block, run seed
        method = student or "lori"
        values = with_validation(config, {**config["distill"]["common"], **config["distill"].get(method, {}),
                                          "method": method, **training_runtime(config, stage),
                                          **lora_args(config, stage)})
        student = None
    else:
        student = student if stage == "distill" else None
        values = stage_args(config, stage, split=getattr(ns, "split", None), student=student)
    if stage in MODEL_STAGES:
        values.update(runtime_args(config, student), threads=config["threads"])
    return values


def parse_stage_args(cls: type[T], argv: Sequence[str] | None, description: str,
                     paths: Sequence[tuple[str, str]], stage: str | None = None) -> tuple[T, argparse.Namespace]:
    """Parse a stage CLI: required path flags, ``--config`` and the dataclass knobs.

    ``paths`` lists ``(flag, help)`` for the stage's explicit inputs/outputs. With ``--config``,
    the ``stage``'s values come from that pipeline config (:func:`config_section`); CLI flags
    override them.
    """
    parser = argparse.ArgumentParser(prog=f"lori {stage}" if stage else None, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, help_ in paths:
        required = not help_.startswith("(optional)")
        parser.add_argument(flag, required=required, help=help_ + ("; required" if required else "; default: none"))
    parser.add_argument("--config", help="full pipeline config YAML; its section for this stage gives the defaults "
                                         "below, flags override them; default: none")
    add_dataclass_args(parser, cls, stage)
    ns = parser.parse_args(argv)
    values: dict = {}
    if ns.config and stage is not None:
        values.update(config_section(load_config(ns.config), stage, ns))
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k in names}
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return build_dataclass(cls, values, parser.prog), ns


def to_flags(values: dict) -> str:
    """Inverse of :func:`parse_stage_args` for the workflow: dict -> ``--key value`` flags.

    Canonical (keys sorted, JSON values with sorted keys): Snakemake reruns a job when its
    params text changes, and a config that only reorders keys must not rerun anything.
    """
    out = []
    for k, v in sorted(values.items()):
        flag = "--" + k.replace("_", "-")
        if v is None:
            out.append(f"{flag} none")
        elif isinstance(v, bool):
            out.append(f"{flag} {'true' if v else 'false'}")
        elif isinstance(v, (list, tuple, dict)):
            out.append(f"{flag} {shlex.quote(json.dumps(v, sort_keys=True))}")
        else:
            out.append(f"{flag} {shlex.quote(str(v))}")
    return " ".join(out)
