"""Benchmark 3: cost of one training step per method, measured in one process on the same batches.

- ``no_cot SFT``: the student answering directly (K = 0), answer cross-entropy only;
- ``CoT SFT``: the teacher's explicit-CoT step (full question + CoT + answer sequence);
- ``LoRi``: K latent thoughts + L_reason (precomputed teacher statistics) + L_anchor;
- ``LoRi, layers``: the same step with the thoughts through the model's own decoder layers
  instead of the fused step (:mod:`lori.model.fused_step`): what the fused step saves;
- ``CODI``: the CODI recipe (:mod:`lori.training.recipes.codi`): a teacher pass on the CoT *in the loop*
  (same model), K latent thoughts, distillation of the pre-answer state.

    python bench/train_step.py [--run results/quickstart] [--steps 20] [--batch-size 64]
    python bench/train_step.py --scratch quickstart|smollm2 [--methods no_cot lori] ...

Needs the artifacts of a finished run (teacher, targets, factors), or ``--scratch``: random
weights from a config (:mod:`scratch`: the quickstart LLaMA or the SmolLM2-135M shape), generated
problems and random teacher statistics of the right shapes (the cost of a step does not depend
on their values). Steps run as the training loop runs them: float32 on CPU, bf16 autocast on CUDA.
The last line prints LoRi / SFT.
"""
from __future__ import annotations

import contextlib
import random
import time

import torch
from benchlib import device_name, run_parser, setup, sync, unfused
from scratch import SHAPES, scratch_problem

from lori.artifacts.factors import load_factors
from lori.artifacts.targets import read_targets
from lori.data.records import BOT, EOT, read_records
from lori.distill import DistillConfig
from lori.model.latent import LatentStudent
from lori.model.loading import load_checkpoint
from lori.model.precision import autocast_context
from lori.model.sequences import teacher_batch, teacher_sequence
from lori.training.recipes.base import RecipeContext
from lori.training.recipes.lori import TeacherTargets
from lori.training.recipes.registry import RECIPES


#: --methods name -> (label, distill method); cot_sft is the teacher's own SFT step; lori_layers is
#: LoRi with its thoughts through the model's own decoder layers (the fused step switched off)
METHODS = {"no_cot": ("no_cot SFT", "no_cot"), "cot_sft": ("CoT SFT", "cot_sft"), "lori": ("LoRi", "lori"),
           "lori_layers": ("LoRi, layers", "lori"), "codi": ("CODI", "codi")}


def timed(steps: dict, batches, device, warmup: int = 3) -> dict[str, float]:
    """Mean seconds per step of each method; methods alternate step by step so that
    machine noise hits them alike."""
    total = dict.fromkeys(steps, 0.0)
    for i, idx in enumerate(batches):
        for label, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step(idx)
            sync(device)
            if i >= warmup:
                total[label] += time.perf_counter() - start
    return {label: t / (len(batches) - warmup) for label, t in total.items()}


def main() -> None:
    ap = run_parser(__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--latent-steps", type=int, default=6)
    ap.add_argument("--scratch", choices=sorted(SHAPES), help="random weights from a config, no finished run needed")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args()
    if args.scratch:
        device, _ = setup(args, [])
        problem = scratch_problem(args.scratch, device)
        records, tok, make_model, targets, factors = (problem.records, problem.tokenizer, problem.make_model,
                                                      problem.targets, problem.factors)
    else:
        device, run = setup(args, ["teacher", "teacher_cot/train.jsonl", "targets/train.zarr", "lowrank/factors.zarr"])
        records = read_records(run / "teacher_cot/train.jsonl")
        factors, _ = load_factors(str(run / "lowrank/factors.zarr"))
        targets = TeacherTargets(read_targets(run / "targets/train.zarr", [r.id for r in records]), "full").to(device)
        factors = factors.to(device)
        tok = load_checkpoint(run / "teacher")[1]

        def make_model():
            return load_checkpoint(run / "teacher")[0]
    rng = random.Random(0)
    batches = [rng.sample(range(len(records)), args.batch_size) for _ in range(args.steps + 3)]

    def recipe(cfg: DistillConfig, fused: bool = True):
        student = LatentStudent(make_model(), cfg.args.latent_steps, tok.convert_tokens_to_ids(BOT),
                                tok.convert_tokens_to_ids(EOT), feedback=cfg.args.feedback)
        student.to(device).train()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        # each method's own loss step (CODI runs its teacher pass in the loop)
        ctx = RecipeContext(student, tok, records, device, cfg.seed, cfg.steps, targets, factors)
        loss_step = RECIPES[cfg.method](cfg.args, ctx).loss_step

        def step(idx):
            # as the training loop runs it: bf16 autocast on CUDA
            with autocast_context(device), (contextlib.nullcontext() if fused else unfused()):
                loss = loss_step(idx)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def cot_sft():
        cot_model = make_model().to(device).train()
        cot_opt = torch.optim.AdamW(cot_model.parameters(), lr=1e-4)
        seqs = [teacher_sequence(tok, r) for r in records]

        def step(idx):
            batch = {k: v.to(device) for k, v in teacher_batch(tok, [seqs[i] for i in idx]).items()}
            with autocast_context(device):
                loss = cot_model(**batch).loss
            cot_opt.zero_grad(set_to_none=True)
            loss.backward()
            cot_opt.step()
        return step

    steps = {}
    for name in args.methods:
        label, method = METHODS[name]
        if method == "cot_sft":
            steps[label] = cot_sft()
        else:
            extra = {} if method == "no_cot" else {"latent_steps": args.latent_steps}
            steps[label] = recipe(DistillConfig(method=method, device=device.type, **extra), fused=name != "lori_layers")
    if "no_cot SFT" not in steps:
        raise SystemExit("error: --methods must include no_cot (the baseline)")
    shape = f"{args.scratch} shape from config" if args.scratch else args.run
    print(f"# train-step benchmark on {device_name(device, args.threads)}; {shape}; batch {args.batch_size}, "
          f"K={args.latent_steps}, {args.steps} timed steps")
    results = timed(steps, batches, device)
    base = results["no_cot SFT"]
    print(f"{'method':>12} {'ms/step':>9} {'vs no_cot SFT':>14}")
    for label, t in results.items():
        print(f"{label:>12} {1000 * t:>9.1f} {t / base:>13.2f}x")
    if "LoRi" in results:
        others = "; ".join(f"LoRi / {label} = {results['LoRi'] / t:.2f}x" for label, t in results.items()
                           if label not in ("LoRi", "no_cot SFT"))
        print(f"RESULT LoRi step / no_cot SFT step = {results['LoRi'] / base:.2f}x (goal <= 1.3x)"
              + (f"; {others}" if others else ""))

if __name__ == "__main__":
    main()
