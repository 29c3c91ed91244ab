r"""Stage ``distill``: train one student (``lori``, ``no_cot``, ``codi``, ``coconut``, ``sim_cot``, ``icot_si``,
``icot_kd``, ``pause``) with the shared loop.

Each method is a recipe (:mod:`lori.training.recipes`): its typed knobs
(:mod:`lori.training.recipes.args`, with the papers' defaults) and its loss step, one module per
method; this stage loads the inputs, builds the student and runs the shared loop
(:func:`lori.training.loop.fit`). ``cot_sft`` is the teacher itself and is not trained here.

Reads the teacher checkpoint (initialisation), ``teacher_cot/train.jsonl`` and, when LoRi's
alpha or gamma > 0, ``targets/train.zarr`` + ``lowrank/factors.zarr``. Writes
``students/<method>/`` (safetensors, HF layout, ``projection.safetensors`` | ``pause.safetensors`` |
``vertical.safetensors`` (iCoT-KD's emulator), ``latent.json``,
``train_config.json``) and ``students/<method>_metrics.jsonl``; while training, a resumable
checkpoint ``students/<method>.ckpt/`` (:mod:`lori.training.loop`). With ``--val`` and
``--eval-every N`` the student is evaluated on the validation records every N steps, decoded as
``evaluate`` decodes it, and its metrics rows get ``val_accuracy``, ``train_s``, ``flops_total``
(:mod:`lori.training.validation`). With a ``--lora`` block only PEFT LoRA adapters in the
student's transformer train (its latent projection fully) and ``students/<method>/`` holds the merged
weights (:mod:`lori.training.lora`); with ``--tensorboard`` the loss terms, learning rate, throughput
and validation accuracy also go to ``results/<run>/tb/<method>/``.

Standalone::

    python -m lori.distill --method lori --config config/config.yaml \
        --teacher results/quickstart/teacher --records results/quickstart/teacher_cot/train.jsonl \
        --targets results/quickstart/targets/train.zarr --factors results/quickstart/lowrank/factors.zarr \
        --out results/quickstart/students/lori --alpha 0.5
"""
from __future__ import annotations

import dataclasses
import json
import logging
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

from lori.artifacts.factors import check_factors_fit, load_factors
from lori.artifacts.store import ArtifactError
from lori.artifacts.targets import check_targets_match_factors, read_targets
from lori.cli import stage_main, stage_summary
from lori.config import value_text
from lori.data.records import BOT, EOT, check_training_records, read_records
from lori.lowrank.maths import Factors
from lori.sweep import matched_steps
from lori.training.options import OptimConfig, check_runtime
from lori.training.recipes.args import ALL_KNOBS, ARGS, UNSET, recipe_args

# torch, transformers and the model/training modules are imported in the functions that use them:
# `--help` (built from DistillConfig) must not wait for torch
if TYPE_CHECKING:
    from lori.model.latent import LatentStudent
    from lori.training.recipes.lori import TeacherTargets
    from lori.training.step_info import StepTargets

log = logging.getLogger("lori.distill")


@dataclass
class _DistillBase(OptimConfig):
    method: str = "lori"                 # lori | no_cot | codi | coconut | sim_cot | icot_si | icot_kd | pause (lori.training.recipes)
    init: Literal["teacher", "base"] = "teacher"   # start from the CoT teacher or re-initialise its architecture
    length_curriculum: int = 0           # optimizer steps per chain-length stage: shortest CoTs first (0 = off)
    seed: int = 0
    threads: int = 2
    device: str = "auto"


def _method_knobs() -> list[tuple[str, object, dataclasses.Field]]:
    """Every method's knobs as flat fields (config blocks and the CLI give them flat), defaulting to
    UNSET = the method's default. Their types, defaults and meaning live in the Args classes."""
    out = []
    for name in ALL_KNOBS:
        cls = next(c for c in ARGS.values() if name in {f.name for f in dataclasses.fields(c)})
        out.append((name, typing.Optional[typing.get_type_hints(cls)[name]],
                    dataclasses.field(default=UNSET, metadata={"default_text": _knob_defaults(name)})))
    return out


def _knob_defaults(name: str) -> str:
    """A knob's default per method that reads it, for --help: ``6`` or ``lori 6, coconut 2 x 3``."""
    defaults = {method: field.default for method, cls in ARGS.items() for field in dataclasses.fields(cls)
                if field.name == name and field.default is not dataclasses.MISSING}
    if len(set(map(repr, defaults.values()))) == 1:
        return f"{value_text(next(iter(defaults.values())))} ({', '.join(defaults)})"
    return ", ".join(f"{method} {value_text(value)}" for method, value in defaults.items())


def _post_init(self) -> None:
    check_runtime(self)
    if self.init not in ("teacher", "base"):
        raise ValueError(f"init must be teacher | base, got {self.init!r}")
    self.args = recipe_args({k: getattr(self, k) for k in ("method", *ALL_KNOBS)}, self.steps)
    own = {f.name for f in dataclasses.fields(self.args)}
    for name in ALL_KNOBS:     # the resolved knobs (None: another method's), for the logs and train_config.json
        setattr(self, name, getattr(self.args, name) if name in own else None)


#: The stage's config: the shared trainer's knobs, the student's start, and every method's knobs
#: flat (generated from lori.training.recipes.args.ARGS); ``cfg.args`` is the method's typed Args.
DistillConfig = dataclasses.make_dataclass(
    "DistillConfig", _method_knobs(), bases=(_DistillBase,), namespace={
        "__post_init__": _post_init, "__module__": __name__,
        "needs_targets": property(lambda self: self.args.needs_targets)})


def build_student(cfg: DistillConfig, teacher: str) -> tuple[LatentStudent, object]:
    from transformers import AutoModelForCausalLM

    from lori.model.latent import LatentStudent
    from lori.model.loading import load_checkpoint

    model, tokenizer = load_checkpoint(teacher)
    if cfg.init == "base":
        model = AutoModelForCausalLM.from_config(model.config)
    student = LatentStudent(model, cfg.args.latent_steps, tokenizer.convert_tokens_to_ids(BOT),
                            tokenizer.convert_tokens_to_ids(EOT), feedback=cfg.args.feedback)
    return student, tokenizer


def plain_student_like(student: LatentStudent) -> LatentStudent:
    """A fresh, unsharded student of the same architecture (to receive FSDP-gathered weights)."""
    from transformers import AutoModelForCausalLM

    from lori.model.latent import LatentStudent
    from lori.model.vertical import Vertical

    vertical = student.vertical
    fresh = None if vertical is None else Vertical.from_config(
        student.model.config, vertical.mixture_size, vertical.mixture_temperature)
    return LatentStudent(AutoModelForCausalLM.from_config(student.model.config), student.latent_steps,
                         student.bot_id, student.eot_id, feedback=student.feedback, vertical=fresh)


def load_teacher_statistics(cfg: DistillConfig, targets_path: str | None, factors_path: str | None, records,
                            student: LatentStudent, tokenizer, teacher: str,
                            device) -> tuple[TeacherTargets | None, Factors, StepTargets | None]:
    """(targets, factors, steps) on ``device`` for a student that reads them, checked against each
    other: LoRi's trajectory statistics and anchors (when alpha or gamma > 0), the factors, and the
    step anchors' targets (when step_anchor > 0; in full space from one pass of the teacher)."""
    from lori.model.loading import load_checkpoint
    from lori.training.recipes.lori import TeacherTargets
    from lori.training.step_info import (
        core_step_targets,
        full_step_targets,
        record_step_lengths,
        record_step_points,
    )

    if not (targets_path and factors_path):
        raise ArtifactError(f"method '{cfg.method}' (alpha={cfg.alpha}, gamma={cfg.gamma}, step_anchor="
                            f"{cfg.step_anchor}) needs --targets and --factors")
    factors, factors_attrs = load_factors(factors_path)
    check_factors_fit(factors, factors_path, student.model.config, teacher)
    targets = read_targets(targets_path, [r.id for r in records])
    check_targets_match_factors(targets, targets_path, factors, factors_attrs, factors_path)
    args = cfg.args
    stats = TeacherTargets(targets, args.covariance).to(device) if getattr(args, "alpha", 0) > 0 or \
        getattr(args, "gamma", 0) > 0 else None
    steps = None
    if args.step_anchor > 0:
        lengths = record_step_lengths(tokenizer, records)
        points = record_step_points(tokenizer, records) if args.step_summary == "result" else None
        if args.step_anchor_space == "core":
            steps = core_step_targets(targets.core, targets.offsets, lengths, args.step_summary, points)
        else:   # the teacher's own states, not the student's (which may start elsewhere: init base)
            model, _ = load_checkpoint(teacher)
            steps = full_step_targets(model, tokenizer, records, factors, lengths, args.step_summary, points,
                                      cfg.batch_size, device)
            del model
        steps = steps.to(device)
    return stats, factors.to(device), steps


def tensorboard_dir(out: str) -> Path:
    """``results/<run>/tb/<student>`` for ``out`` = ``results/<run>/students/<student>`` (``runtime.tensorboard``)."""
    return Path(out).parent.parent / "tb" / Path(out).name


def curriculum_stream(cfg: DistillConfig, records) -> Iterator[list[int]] | None:
    """The batch stream of ``cfg.length_curriculum`` > 0: problems with the fewest CoT steps first,
    one longer length more every ``length_curriculum`` steps, then all problems
    (:func:`lori.training.loop.length_curriculum_batches`); None when off (plain seeded epochs)."""
    from lori.training.loop import length_curriculum_batches

    if cfg.length_curriculum <= 0:
        return None
    lengths = [len(r.steps) for r in records]
    levels = sorted(set(lengths))
    if levels == [0]:
        raise ArtifactError("length_curriculum needs the records' CoT steps, and these records have none "
                            "(set distill.common.length_curriculum: 0)")
    ramp = cfg.length_curriculum * (len(levels) - 1)
    log.info("length curriculum: CoT lengths %s, one more every %d steps; all problems from step %d",
             levels, cfg.length_curriculum, ramp)
    if ramp >= cfg.steps:
        log.warning("length_curriculum: the ramp (%d steps) is not over before the last step (%d): the longest "
                    "problems are never trained on", ramp, cfg.steps)
    return length_curriculum_batches(lengths, cfg.batch_size, cfg.seed, cfg.length_curriculum)


def run(cfg: DistillConfig, teacher: str, records_path: str, out: str, targets_path: str | None = None,
        factors_path: str | None = None, metrics: str | None = None,
        match: tuple[str, str, str] | None = None, val: str | None = None) -> list[dict]:
    """Train one student. ``match = (ref_metrics, base_metrics, by)`` sets ``cfg.steps`` so the
    student gets the ref student's training compute (:func:`lori.sweep.matched_steps`). ``val``:
    validation records, evaluated every ``cfg.eval_every`` steps (:mod:`lori.training.validation`)."""
    from lori.model.loading import num_params, setup_runtime
    from lori.training.distributed import cleanup, init_distributed, unsharded
    from lori.training.loop import checkpoint_dir, discard_checkpoint, fingerprint, fit, provenance
    from lori.training.lora import add_lora, merge_lora
    from lori.training.recipes.registry import RECIPES, RecipeContext
    from lori.training.validation import validation_evaluator

    matched = None
    if match is not None:
        try:
            cfg.steps, matched = matched_steps(*match)
        except ValueError as e:
            raise ArtifactError(str(e)) from None
        log.info("compute-matched to %s by %s: %d steps (%.3g vs %.3g per step)", match[0], match[2], cfg.steps,
                 matched["ref_cost_per_step"], matched["base_cost_per_step"])
    device = setup_runtime(cfg.seed, cfg.threads, cfg.device)
    info, device = init_distributed(device)      # torchrun: one process per device, rank 0 writes
    records = read_records(records_path)
    # lori / no_cot / pause students see no CoT text; the recipes train on it (teacher pass, curricula)
    check_training_records(records, records_path,
                           need_cot=cfg.method not in ("lori", "no_cot", "pause") or getattr(cfg.args, "cot_stages", 0) > 0)
    student, tokenizer = build_student(cfg, teacher)
    # LoRA on the student's HF model only: the latent projection (outside it) stays fully trained
    adapters = add_lora(student.model, cfg.lora)
    student.to(device).train()
    targets = factors = steps = None
    if cfg.needs_targets:
        targets, factors, steps = load_teacher_statistics(cfg, targets_path, factors_path, records, student, tokenizer, teacher,
                                                   device)
    log.info("student '%s': %.2fM parameters, K=%d, %s, %d examples, device %s", cfg.method,
             num_params(student) / 1e6, cfg.args.latent_steps, cfg.args, len(records), device)
    recipe = RECIPES[cfg.method](cfg.args, RecipeContext(student, tokenizer, records, device, cfg.seed, cfg.steps,
                                                         targets, factors, steps, teacher))
    # decoded the way `evaluate` decodes this student: K latent thoughts (0: No-CoT, iCoT-SI), then the answer
    evaluator = validation_evaluator(student, tokenizer, val, cfg, device)
    stream = curriculum_stream(cfg, records)
    ckpt = checkpoint_dir(out)   # resumable: a killed run continues from <out>.ckpt (lori.training.loop)
    run_id = fingerprint(asdict(cfg), teacher, records_path, targets_path, factors_path, *([val] if val else []))
    rows = fit(student, recipe.loss_step, len(records), cfg, cfg.seed, metrics, desc=f"distill[{cfg.method}]",
               ckpt=ckpt, run_id=run_id, dist_info=info, on_step=recipe.on_step, evaluator=evaluator,
               tb_dir=tensorboard_dir(out), stream=stream)
    if adapters is not None:
        student.model = merge_lora(adapters)     # saved merged: evaluate and `lori thoughts` load it as is
    student.eval()
    final = unsharded(student, info, lambda: plain_student_like(student))   # FSDP: gathered on rank 0
    if info.is_main:
        final.save(out, tokenizer, {"train_config.json": json.dumps(
            {**provenance(cfg), **({"compute_match": matched} if matched else {})}, indent=2)})
        discard_checkpoint(ckpt)
    cleanup(info)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    cfg, ns = stage_main(DistillConfig, argv, __doc__,
                         [("--teacher", "teacher checkpoint dir (initialisation)"), ("--records", "teacher_cot records jsonl"),
                          ("--out", "student checkpoint dir"), ("--targets", "(optional) targets Zarr store"),
                          ("--factors", "(optional) factors Zarr store"), ("--metrics", "(optional) metrics jsonl"),
                          ("--match-ref", "(optional) metrics jsonl of the student whose compute to match"),
                          ("--match-base", "(optional) metrics jsonl of this method's plain run (cost of one step)"),
                          ("--match-by", "(optional) flops | wall (with --match-ref/--match-base)"),
                          ("--val", "(optional) validation records jsonl, evaluated every --eval-every steps"),
                          ("--student", "(optional) with --config: the run's student whose knobs to take (a method, "
                                        "sweep variant or <variant>-seed<k>; default: --method)")],
                         "distill")
    if bool(ns.match_ref) != bool(ns.match_base):
        raise ArtifactError("--match-ref and --match-base go together")
    match = (ns.match_ref, ns.match_base, ns.match_by or "flops") if ns.match_ref else None
    rows = run(cfg, ns.teacher, ns.records, ns.out, ns.targets, ns.factors, ns.metrics, match, ns.val)
    steps = rows[-1]["step"] if rows else cfg.steps     # a compute-matched student sets its own step count
    stage_summary(f"distill {cfg.method}", steps, "steps", f"final loss {rows[-1]['loss']:.4g}" if rows else "")


if __name__ == "__main__":
    main()
