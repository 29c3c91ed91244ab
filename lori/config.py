"""Config: one JSON schema, defaults filled in, loud errors, and stage CLIs from dataclasses.

The schema (``workflow/schemas/config.schema.yaml``) is the single source of defaults for
the pipeline config; the Snakefile and every stage's ``--config`` path validate through
:func:`validate_config`. Each stage has a ``@dataclass`` of its own knobs; :func:`parse_stage_args`
turns it into a CLI (``--rank-layer 2 --center``) and checks types, so a stage runs the same
inside Snakemake and by hand.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


class ConfigError(ValueError):
    """Invalid configuration; the message names every offending key."""


def load_schema() -> dict:
    if not SCHEMA_PATH.exists():
        raise ConfigError(f"schema not found at {SCHEMA_PATH} (install lori with `pip install -e .`)")
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _validator_with_defaults():
    import jsonschema

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
    validator = _validator_with_defaults()(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors]
        raise ConfigError(f"{source}: {len(errors)} config error(s):\n" + "\n".join(lines))
    # second pass: defaults filled during the first pass may hide nested defaults
    validator.validate(config)
    _check_consistency(config, source)
    return config


def _check_consistency(config: dict, source: str) -> None:
    from lori.sweep import check_sweep

    problems = []
    qs = config["data"].get("quickstart", {})
    splits = [("train", config["data"]["train"]), *config["data"]["benchmarks"].items()]
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


def load_config(path: str | Path | None = None) -> dict:
    path = Path(path or DEFAULT_CONFIG)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return validate_config(config, str(path))


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


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        conv, is_bool = _converter(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        kw: dict = {"dest": f.name, "type": conv, "default": argparse.SUPPRESS, "help": f.metadata.get("help")}
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


def parse_stage_args(cls: type[T], argv: Sequence[str] | None, description: str,
                     paths: Sequence[tuple[str, str]], section=None) -> tuple[T, argparse.Namespace]:
    """Parse a stage CLI: required path flags, ``--config`` and the dataclass knobs.

    ``paths`` lists ``(flag, help)`` for the stage's explicit inputs/outputs. ``section`` is
    a function ``(config, namespace) -> dict`` picking the stage's values from a full config
    file; CLI flags override them.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, help_ in paths:
        required = not help_.startswith("(optional)")
        parser.add_argument(flag, required=required, help=help_)
    parser.add_argument("--config", help="full pipeline config YAML; its section for this stage gives defaults")
    add_dataclass_args(parser, cls)
    ns = parser.parse_args(argv)
    values: dict = {}
    if ns.config and section is not None:
        values.update(section(load_config(ns.config), ns))
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k in names}
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return build_dataclass(cls, values, parser.prog), ns


def to_flags(values: dict) -> str:
    """Inverse of :func:`parse_stage_args` for the workflow: dict -> ``--key value`` flags.

    Canonical (keys sorted, JSON values with sorted keys): Snakemake reruns a job when its
    params text changes, and a config that only reorders keys must not rerun anything.
    """
    import shlex

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
