"""Benchmark: one training step (forward + backward) of each published baseline as its reference
code runs it and as lori's recipe runs it, on the same model and the same batches, in one process.

- reference: the re-implementations of tests/reference_forwards.py (checked equal to the recipes by
  tests/test_parity.py), run with lori's documented choices so both sides compute the same loss:
  Coconut's n_latent + 1 passes of the model's own forward with the cut KV cache and the latents
  written back into a rebuilt ``inputs_embeds``; SIM-CoT's Coconut passes plus one decoder batch per
  latent group; CODI's cached question pass, latent steps and answer block plus its teacher pass run
  twice (``no_grad`` for the distilled states, with grad for its CE); iCoT-SI's cut-and-rebatch then
  one forward;
- lori: ``RECIPES[method](args, ctx).loss_step`` as the distill stage runs it (the latent chain on the
  cache, the fused LLaMA step, one decoder batch for every group, one teacher pass).

    python bench/peers.py [--shapes quickstart smollm2] [--methods coconut sim_cot codi icot_si]
                          [--steps 10] [--batch-size 32] [--device cpu|cuda] [--threads 2]

Models are built from a config with random weights (bench/scratch.py: the quickstart LLaMA, hidden 128,
4 layers, word tokenizer; or the SmolLM2-135M shape) on generated quickstart problems, so no finished
run is needed. Coconut and SIM-CoT run their final stage (every step replaced by max_stage * c = 6
latents; ``--stage`` picks another), iCoT-SI a fixed count of removed CoT tokens (``--removed``,
smoothing off), CODI K = 6. Before timing, each method's two losses on the first batch must agree
(float32 on CPU: rtol 1e-4; bf16 autocast on CUDA, as training runs: rtol 2e-2). Both sides use one
model (no optimizer step: the weights stay equal) and alternate step by step, so machine noise hits
them alike. The records are tokenized once for the reference (as its dataset code does); lori's
recipes build their batches inside the step, as in training. The last line prints reference / lori.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from benchlib import device_name, setup
from scratch import SHAPES, scratch_problem
from train_step import timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: tests.reference_forwards

from lori.data.records import BOT, EOT                                  # noqa: E402
from lori.distill import DistillConfig                                   # noqa: E402
from lori.model.latent import LatentStudent                              # noqa: E402
from lori.model.precision import autocast_context                       # noqa: E402
from lori.training.recipes.base import RecipeContext                    # noqa: E402
from lori.training.recipes.registry import RECIPES                      # noqa: E402
from tests import reference_forwards as ref                             # noqa: E402

METHODS = ("coconut", "sim_cot", "codi", "icot_si")
LABELS = {"coconut": "Coconut", "sim_cot": "SIM-CoT", "codi": "CODI", "icot_si": "iCoT-SI"}


def method_setup(method: str, problem, device, stage: int | None, removed: int):
    """(student, the recipe's loss step, the reference's loss step) for one method, one shared model."""
    knobs = {"coconut": {"steps": 10, "steps_per_stage": 1}, "sim_cot": {"steps": 10, "steps_per_stage": 1},
             "codi": {}, "icot_si": {"steps": 100_000, "steps_per_stage": 1, "remove_per_stage": 1,
                                     "removal_lambda": None}}[method]
    cfg = DistillConfig(method=method, device=device.type, **knobs)
    args, tok = cfg.args, problem.tokenizer
    student = LatentStudent(problem.make_model(), args.latent_steps, tok.convert_tokens_to_ids(BOT),
                            tok.convert_tokens_to_ids(EOT), feedback=args.feedback).to(device).train()
    ctx = RecipeContext(student, tok, problem.records, device, cfg.seed, cfg.steps)
    recipe = RECIPES[method](args, ctx)
    student.to(device)                                                  # SIM-CoT's decoder is attached by build
    ps = ref.pieces(tok, problem.records)                               # the reference's dataset: tokenized once
    pad, eos = tok.pad_token_id, tok.eos_token_id
    if method in ("coconut", "sim_cot"):
        k = stage if stage is not None else args.max_stage + 1
        recipe.on_step(k - 1)
        common = (args.thoughts_per_step, args.max_stage, student.bot_id, student.eot_id, pad)
        if method == "coconut":
            def reference(idx):
                return ref.coconut_loss(student.model, [ps[i] for i in idx], k, *common, device=device)
        else:
            def reference(idx):
                return ref.sim_cot_loss(student.model, student.step_decoder.lm, [ps[i] for i in idx], k, *common, eos,
                                        decoder_weight=args.decoder_weight, device=device,
                                        **ref.LORI_CHOICES["sim_cot"])
    elif method == "codi":
        def reference(idx):
            return ref.codi_loss(student.model, student.projection, [ps[i] for i in idx], args.latent_steps,
                                 student.bot_id, student.eot_id, pad, args.distill_weight, args.teacher_weight,
                                 device=device, **ref.LORI_CHOICES["codi"])
    else:
        recipe.on_step(removed)                                         # one token per step: `removed` scheduled

        def reference(idx):
            return ref.icot_si_loss(student.model, [ps[i] for i in idx], [removed] * len(idx), eos, device=device,
                                    **ref.LORI_CHOICES["icot_si"])
    return student, recipe.loss_step, reference


def main() -> None:
    import argparse
    import random

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--shapes", nargs="+", default=["quickstart", "smollm2"], choices=sorted(SHAPES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side (after 3 warm-up steps)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--stage", type=int, default=None, help="Coconut/SIM-CoT stage (default: the final one)")
    ap.add_argument("--removed", type=int, default=8, help="iCoT-SI: CoT tokens removed from every row")
    args = ap.parse_args()
    args.run = "."
    device, _ = setup(args, [])
    rtol = 2e-2 if device.type == "cuda" else 1e-4
    print(f"# baseline steps, reference code vs lori recipe, on {device_name(device, args.threads)}; batch "
          f"{args.batch_size}, {args.steps} timed steps each (forward + backward, no optimizer step)")
    print(f"{'shape':>10} {'method':>8} {'ref loss':>10} {'lori loss':>10} {'ref ms':>9} {'lori ms':>9} "
          f"{'ref/lori':>9}")
    ratios = []
    for shape in args.shapes:
        problem = scratch_problem(shape, device)
        rng = random.Random(0)
        batches = [rng.sample(range(len(problem.records)), args.batch_size) for _ in range(args.steps + 3)]
        for method in args.methods:
            student, ours, theirs = method_setup(method, problem, device, args.stage, args.removed)

            def step(loss_step):
                def run(idx):
                    with autocast_context(device):
                        loss = loss_step(idx)["loss"]
                    loss.backward()
                    student.zero_grad(set_to_none=True)
                return run

            with torch.no_grad(), autocast_context(device):
                ref_loss, lori_loss = float(theirs(batches[0])["loss"]), float(ours(batches[0])["loss"])
            if abs(ref_loss - lori_loss) > rtol * abs(ref_loss):
                raise SystemExit(f"error: {shape} {method}: reference loss {ref_loss:.6f} != lori loss {lori_loss:.6f}")
            t = timed({"ref": step(theirs), "lori": step(ours)}, batches, device)
            ratios.append((shape, method, t["ref"] / t["lori"]))
            print(f"{shape:>10} {method:>8} {ref_loss:>10.5f} {lori_loss:>10.5f} {1000 * t['ref']:>9.1f} "
                  f"{1000 * t['lori']:>9.1f} {t['ref'] / t['lori']:>8.2f}x")
            del student, ours, theirs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("RESULT reference step / lori step: " + "; ".join(f"{LABELS[m]} {s} {r:.2f}x" for s, m, r in ratios))


if __name__ == "__main__":
    main()
