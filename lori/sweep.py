"""Students of a run: methods x sweep variants x seeds, and compute-matched training budgets.

One place decides what a run trains, so the Snakefile, the stages and the report agree:

- every student method in ``methods`` (all but ``cot_sft``, the teacher) is a *variant* of itself;
- ``sweep:`` adds named variants, each a method plus knob overrides
  (``lori_no_cov: {method: lori, w_cov: 0}``) — the ablations;
- ``seeds:`` trains every variant once per seed. The first seed's student is
  ``students/<variant>``, the others ``students/<variant>-seed<k>`` (so a one-seed run keeps
  the plain names); a sweep variant's own ``seeds:`` replace the run's for that variant (more
  seeds for a headline pair without multiplying every other student);
- a LoRi variant may set the factor ranks (``lori_r1x8: {method: lori, rank_layer: 1, rank_hidden: 8}``):
  it gets its own factors and targets (``lowrank/factors-rl1-rh8.zarr``, ``targets/train-rl1-rh8.zarr``,
  :func:`lowrank_tag`), so a rank sweep runs in one DAG beside the other ablations;
- a variant with ``match_compute: {to: lori, by: flops}`` trains for as many steps as give it
  the compute of the ``to`` student: ``steps = to_steps * to_cost / base_cost``, the per-step
  costs read from the metrics of ``to`` and of the variant's own method trained plainly
  (``flops``: 6 x parameters x positions processed, deterministic; ``wall``: measured seconds
  per step, machine- and load-dependent).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

SEED_SUFFIX = re.compile(r"^(?P<variant>.+)-seed(?P<seed>\d+)$")
FACTOR_KNOBS = {"rank_layer": "rl", "rank_hidden": "rh"}   # variant keys that change the factors (tag prefix)
VARIANT_ONLY = ("method", "match_compute", "seeds", *FACTOR_KNOBS)   # variant keys that are not distill knobs
#: a factor-rank tag (:func:`lowrank_tag`); also the Snakemake wildcard constraint of the rank
#: rules, so it has no (named) groups of its own
LOWRANK_TAG = r"(?:rl[1-9]\d*)?-?(?:rh[1-9]\d*)?"


def seeds_of(config: dict) -> list[int]:
    """Student seeds; the first is the plain-named one. Defaults to the run's ``seed``."""
    return list(config.get("seeds") or [config["seed"]])


def variants(config: dict) -> dict[str, dict]:
    """name -> variant spec ({"method": ..., knob overrides, optional match_compute})."""
    out = {m: {"method": m} for m in config["methods"] if m != "cot_sft"}
    out.update({name: dict(spec) for name, spec in (config.get("sweep") or {}).items()})
    return out


def student_name(variant: str, seed: int, seeds: list[int]) -> str:
    return variant if seed == seeds[0] else f"{variant}-seed{seed}"


def split_student(name: str) -> tuple[str, int | None]:
    """``lori-seed2`` -> (``lori``, 2); ``lori`` -> (``lori``, None: the run's first seed)."""
    m = SEED_SUFFIX.match(name)
    return (m["variant"], int(m["seed"])) if m else (name, None)


def student_runs(config: dict) -> dict[str, tuple[str, int]]:
    """Every student the run trains: name -> (variant, seed), variants in config order. A sweep
    variant's own ``seeds`` (e.g. more seeds for a headline pair) replace the run's for it; names
    follow the run's seeds (the run's first seed is the plain name)."""
    seeds = seeds_of(config)
    return {student_name(v, s, seeds): (v, s) for v, spec in variants(config).items()
            for s in (spec.get("seeds") or seeds)}


def student_config(config: dict, name: str) -> dict:
    """distill.common + distill.<method> + the variant's overrides: exactly one student's knobs."""
    variant, _ = student_runs(config)[name]
    spec = variants(config)[variant]
    method = spec["method"]
    overrides = {k: v for k, v in spec.items() if k not in VARIANT_ONLY}
    return {**config["distill"]["common"], **config["distill"].get(method, {}), **overrides, "method": method}


def factor_overrides(config: dict, name: str) -> dict[str, int]:
    """The factorize knobs a student's variant overrides ({} for the run's own factors)."""
    spec = variants(config)[student_runs(config)[name][0]]
    return {k: spec[k] for k in FACTOR_KNOBS if k in spec}


def lowrank_tag(overrides: dict[str, int]) -> str:
    """File-name tag of a variant's factors and targets: ``{rank_layer: 1, rank_hidden: 8}`` ->
    ``rl1-rh8``; ``{}`` -> ``""`` (the run's plain ``factors.zarr`` / ``train.zarr``)."""
    return "-".join(f"{FACTOR_KNOBS[k]}{overrides[k]}" for k in FACTOR_KNOBS if k in overrides)


def parse_lowrank_tag(tag: str) -> dict[str, int]:
    """Inverse of :func:`lowrank_tag`."""
    if not tag or not re.fullmatch(LOWRANK_TAG, tag):
        raise ValueError(f"not a factor-rank tag: {tag!r} (expected e.g. rl1-rh8, rl2, rh16)")
    knob = {prefix: k for k, prefix in FACTOR_KNOBS.items()}
    return {knob[prefix]: int(v) for prefix, v in re.findall(r"(rl|rh)(\d+)", tag)}


def matched_inputs(config: dict, name: str) -> dict[str, str] | None:
    """For a compute-matched student: the student names whose metrics set its budget."""
    variant, seed = student_runs(config)[name]
    spec = variants(config)[variant]
    match = spec.get("match_compute")
    if not match:
        return None
    seeds = seeds_of(config)
    return {"ref": student_name(match["to"], seed, seeds), "base": student_name(spec["method"], seed, seeds),
            "by": match.get("by", "flops")}


def check_sweep(config: dict) -> list[str]:
    """Consistency problems of ``sweep`` / ``seeds`` (reported with the other config checks)."""
    problems = []
    methods = [m for m in config["methods"] if m != "cot_sft"]
    seeds = seeds_of(config)
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds: repeated seed in {seeds}")
    all_variants = variants(config)
    for name, spec in (config.get("sweep") or {}).items():
        if name in config["methods"] or name == "cot_sft":
            problems.append(f"sweep.{name}: the name is already a method; pick another")
        if SEED_SUFFIX.match(name):
            problems.append(f"sweep.{name}: names ending in -seed<k> are reserved for seeds")
        ranks = [k for k in FACTOR_KNOBS if k in spec]
        if ranks and spec["method"] != "lori":
            problems.append(f"sweep.{name}: {', '.join(ranks)} change LoRi's factors; method '{spec['method']}' "
                            "does not use them")
        own = spec.get("seeds")
        if own is not None and (len(set(own)) != len(own) or not own):
            problems.append(f"sweep.{name}.seeds: a non-empty list of distinct seeds, got {own}")
        match = spec.get("match_compute")
        if match and own is not None:
            problems.append(f"sweep.{name}: a compute-matched variant takes the run's seeds (its ref's)")
        if match:
            if match["to"] not in all_variants or match["to"] == name:
                problems.append(f"sweep.{name}.match_compute.to: '{match['to']}' is not another student of this run "
                                f"({', '.join(v for v in all_variants if v != name)})")
            if spec["method"] not in methods:
                problems.append(f"sweep.{name}: match_compute needs '{spec['method']}' itself in methods "
                                "(its plain run measures the cost of one step)")
            extra = sorted(set(spec) - {"method", "match_compute"})
            if extra:
                problems.append(f"sweep.{name}: a compute-matched variant takes only method and match_compute "
                                f"(got {', '.join(extra)}): its per-step cost comes from the plain '{spec['method']}'")
    return problems


def _metrics(path: str | Path) -> list[dict]:
    try:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read training metrics ({type(e).__name__}: {e})") from None
    if not rows:
        raise ValueError(f"{path}: no training metrics rows")
    return rows


def total_flops(rows: list[dict]) -> float:
    """Training FLOPs of a run from its metrics rows (each row averages its log window)."""
    total, prev = 0.0, 0
    for r in rows:
        total += r["flops"] * (r["step"] - prev)   # weight a window's mean by the steps it covers
        prev = r["step"]
    return total


def cost_per_step(path: str | Path, by: str) -> tuple[int, float]:
    """(steps, cost of one step) from a metrics jsonl: mean FLOPs or seconds per step."""
    rows = _metrics(path)
    steps = int(rows[-1]["step"])
    if by == "wall":
        cost = float(rows[-1]["sec_per_step"])
    elif by == "flops":
        if any("flops" not in r for r in rows):
            raise ValueError(f"{path}: rows without 'flops'; retrain it with this version of lori")
        cost = total_flops(rows) / steps
    else:
        raise ValueError(f"match_compute.by must be flops | wall, got {by!r}")
    if not (cost > 0 and math.isfinite(cost)):
        raise ValueError(f"{path}: per-step {by} cost is {cost}")
    return steps, cost


def matched_steps(ref_metrics: str | Path, base_metrics: str | Path, by: str) -> tuple[int, dict]:
    """Steps that give a student of the base method the ref student's total compute."""
    ref_steps, ref_cost = cost_per_step(ref_metrics, by)
    _, base_cost = cost_per_step(base_metrics, by)
    steps = max(1, round(ref_steps * ref_cost / base_cost))
    return steps, {"by": by, "ref_steps": ref_steps, "ref_cost_per_step": ref_cost,
                   "base_cost_per_step": base_cost, "steps": steps}
