"""Training FLOPs of every student of a profile, planned before training, and the steps that give
each the compute of a reference student (lori.training.budget).

Reads a finished run's teacher and its training records (the data the students train on), builds
each student's recipe as the distill stage would (seed 0's student) and replays its schedule and
batch stream, reading the steps' ``flops`` terms (6 x parameters x positions; forward only).
Step-anchor weights and LoRi's statistics do not change a step's FLOPs and are switched off here,
so no targets are needed; SIM-CoT's decoder is counted.

    python bench/flops_plan.py --run results/quickstart --configfile config/profiles/attribution.yaml --to lori_steps

prints, per student: its configured steps, FLOPs per step, planned total, the ratio to the
reference and the steps that would match it (``match_steps``; a curriculum keeps its stages and
only the final stage's length changes). Put those steps in the profile.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from benchlib import run_parser, setup
from lori.config import load_config, stage_args
from lori.data.records import read_records
from lori.distill import DistillConfig, build_student
from lori.sweep import student_runs
from lori.training.budget import planned_flops
from lori.training.loop import batches
from lori.training.recipes.registry import RECIPES, RecipeContext

FREE = {"alpha": 0.0, "gamma": 0.0, "step_anchor": 0.0}   # knobs that change no step's FLOPs


def student_cfg(config: dict, name: str, steps: int | None = None) -> DistillConfig:
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    values = {k: v for k, v in stage_args(config, "distill", student=name).items() if k in fields}
    values.update({k: v for k, v in FREE.items() if values.get(k)}, device="cpu", threads=1)
    if steps is not None:
        values["steps"] = steps
    return DistillConfig(**values)


def plan(cfg: DistillConfig, teacher: str, records, samples: int) -> tuple[float, float]:
    torch.manual_seed(cfg.seed)
    student, tok = build_student(cfg, teacher)
    recipe = RECIPES[cfg.method](cfg.args, RecipeContext(student, tok, records, torch.device("cpu"), cfg.seed,
                                                         cfg.steps, teacher=teacher))
    return planned_flops(recipe.loss_step, recipe.on_step, batches(len(records), cfg.batch_size, cfg.seed),
                         cfg.steps, samples)


def main() -> None:
    ap = run_parser(__doc__)
    ap.add_argument("--configfile", required=True, help="the profile whose students to plan")
    ap.add_argument("--to", required=True, help="the reference student (a variant name)")
    ap.add_argument("--samples", type=int, default=48, help="steps whose loss runs per student (spread evenly)")
    ap.add_argument("--students", nargs="*", help="plan only these variants (and the reference)")
    args = ap.parse_args()
    _, run = setup(args, ["teacher", "teacher_cot/train.jsonl"])
    config = load_config(args.configfile)
    records = read_records(run / "teacher_cot/train.jsonl")
    first_seed = config.get("seeds", [config["seed"]])[0] if config.get("seeds") else config["seed"]
    names = [n for n, (_, seed) in student_runs(config).items() if seed == first_seed
             and not (config.get("sweep") or {}).get(n, {}).get("match_compute")]   # matched ones follow their ref
    if args.students:
        names = [n for n in names if n in args.students or n == args.to]
    totals = {}
    for name in names:
        cfg = student_cfg(config, name)
        totals[name] = (cfg, *plan(cfg, str(run / "teacher"), records, args.samples))
    ref = totals[args.to][1]
    print(f"reference {args.to}: {ref:.4g} FLOPs planned ({args.samples} sampled steps per student)")
    print(f"{'student':<22} {'method':<8} {'steps':>6} {'FLOPs/step':>11} {'total':>10} {'/ref':>6} {'match_steps':>11}")
    for name, (cfg, total, per_step) in totals.items():
        match, planned = cfg.steps, total
        for _ in range(4):     # a curriculum's cost per step depends on how long its final stage runs
            new = max(1, round(match * ref / planned))
            if new == match:
                break
            try:
                planned = plan(student_cfg(config, name, new), str(run / "teacher"), records, args.samples)[0]
            except ValueError as e:     # e.g. too few steps for the curriculum's stages
                print(f"{name}: {e}")
                break
            match = new
        print(f"{name:<22} {cfg.method:<8} {cfg.steps:>6} {per_step:>11.4g} {total:>10.4g} {total / ref:>6.3f} {match:>11}")

if __name__ == "__main__":
    main()
