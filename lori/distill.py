"""Stage ``distill``: train one student (``lori``, ``no_cot``, ``codi``, ``coconut``, ``icot_si``) with the shared loop.

``lori`` and ``no_cot`` (this module): ``L = L_task + alpha * L_reason + gamma * L_anchor`` (DESIGN.md §3):

- ``L_task``: answer cross-entropy after ``<bot> [K thoughts] <eot> ####``;
- ``L_reason``: mean + covariance of the student's K thought states, projected by the
  teacher's factors into the core, against the teacher's CoT trajectory statistics
  (``targets/train.zarr``) — no token pairing, length-invariant;
- ``L_anchor``: the student's state at the position predicting the first answer token vs
  the teacher's, in the core (``anchor_space: core``) or on the full normalised states.

``lori`` is alpha=gamma=1, ``no_cot`` is K=0 (answer directly); a CODI-*style* anchor against the
fixed dumped teacher is ``lori`` with ``alpha: 0, anchor_space: full, anchor_loss: smooth_l1``.

The baselines are recipes (:mod:`lori.training.recipes`), each one module: ``codi`` (in-loop
self-distillation, :mod:`lori.training.recipes.codi`), ``coconut`` (stage curriculum,
:mod:`lori.training.recipes.coconut`), ``icot_si`` (stepwise CoT-token removal, :mod:`lori.training.recipes.icot_si`).
They need the records' CoT steps, not the targets. ``cot_sft`` is the teacher itself and is
not trained here.

Reads the teacher checkpoint (initialisation), ``teacher_cot/train.jsonl`` and, when
alpha or gamma > 0 (lori), ``targets/train.zarr`` + ``lowrank/factors.zarr``. Writes
``students/<method>/`` (safetensors, HF layout, ``projection.safetensors``, ``latent.json``,
``train_config.json``) and ``students/<method>_metrics.jsonl``; while training, a resumable
checkpoint ``students/<method>.ckpt/`` (:mod:`lori.training.loop`).

Standalone::

    python -m lori.distill --method lori --config config/config.yaml \
        --teacher results/quickstart/teacher --records results/quickstart/teacher_cot/train.jsonl \
        --targets results/quickstart/targets/train.zarr --factors results/quickstart/lowrank/factors.zarr \
        --out results/quickstart/students/lori --alpha 0.5
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from typing import Literal, Sequence

import numpy as np
import torch

from lori.data.records import BOT, EOT, check_training_records, read_records
from lori.factorize import load_factors
from lori.artifacts.store import ArtifactError, open_store, read_array
from lori.model.latent import LatentStudent
from lori.training.losses import anchor_loss, reason_loss, moments, trajectory_moments
from lori.model.loading import load_checkpoint, num_params, setup_runtime
from lori.training.recipes import RECIPES
from lori.model.sequences import student_batch
from lori.model.trajectory import check_factors_fit
from lori.training.distributed import cleanup, init_distributed, unsharded
from lori.sweep import matched_steps
from lori.training.loop import OptimConfig, checkpoint_dir, discard_checkpoint, fingerprint, fit, provenance, step_flops

log = logging.getLogger("lori.distill")

METHOD_PRESETS: dict[str, dict] = {
    "lori": {"latent_steps": 6, "alpha": 1.0, "gamma": 1.0},
    "no_cot": {"latent_steps": 0, "alpha": 0.0, "gamma": 0.0},
    # the recipes (lori.training.recipes) never read targets: alpha = gamma = 0
    "codi": {"latent_steps": 6, "alpha": 0.0, "gamma": 0.0},
    "coconut": {"alpha": 0.0, "gamma": 0.0, "steps_per_stage": 200},   # latent_steps = max_stage * c
    "icot_si": {"latent_steps": 0, "alpha": 0.0, "gamma": 0.0, "steps_per_stage": 100},
}
# knobs only one method reads; setting one for another method is an error (a typo or a wrong block)
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "codi": ("distill_weight", "teacher_weight", "include_last_step"),
    "coconut": ("thoughts_per_step", "max_stage"),
    "icot_si": ("remove_per_stage", "removal_lambda", "remove_all_beyond"),
    "coconut+icot_si": ("steps_per_stage", "reset_optimizer"),
}


@dataclass
class DistillConfig(OptimConfig):
    method: str = "lori"                 # lori | no_cot | codi | coconut | icot_si (a preset of the knobs below)
    init: Literal["teacher", "base"] = "teacher"   # start from the CoT teacher or re-initialise its architecture
    latent_steps: int | None = None      # K continuous thoughts (None = preset)
    alpha: float | None = None           # weight of L_reason (None = preset)
    gamma: float | None = None           # weight of L_anchor (None = preset)
    w_mean: float = 1.0                  # mean term weight inside L_reason
    w_cov: float = 1.0                   # covariance term weight inside L_reason
    covariance: Literal["full", "per_layer"] = "full"
    anchor_space: Literal["core", "full"] | None = None
    anchor_loss: Literal["mse", "smooth_l1"] | None = None
    # codi (lori.training.recipes.codi): L = L_student + distill_weight * L_KD + teacher_weight * L_teacher
    distill_weight: float = 1.0          # CODI's beta (paper: 1 for GPT-2, 20 for LLaMA-1B)
    teacher_weight: float = 1.0          # CODI's gamma, weight of the teacher pass's CoT cross-entropy
    include_last_step: bool = False      # keep the CoT's last step in the teacher pass (CODI drops it)
    # coconut (lori.training.recipes.coconut)
    thoughts_per_step: int = 2           # c: continuous thoughts replacing one CoT step (paper: 2 on GSM8K)
    max_stage: int = 3                   # stages that replace steps; then all steps go (paper: 3)
    # coconut and icot_si
    steps_per_stage: int | None = None   # optimizer steps per stage (the papers' epochs; None = preset)
    reset_optimizer: bool = True         # reset AdamW at each schedule change (both papers)
    # icot_si (lori.training.recipes.icot_si)
    remove_per_stage: int = 8            # Delta: CoT tokens removed per stage (paper: 8 per epoch)
    removal_lambda: float | None = 4.0   # removal smoothing P(o) ~ exp(-lambda o) (paper: 4); None = off
    remove_all_beyond: int | None = None # remove all CoT once this many are scheduled (paper GSM8K: 39)
    seed: int = 0
    threads: int = 2
    device: str = "auto"

    def __post_init__(self):
        if self.method not in METHOD_PRESETS:
            raise ValueError(f"unknown method {self.method!r} (one of {', '.join(METHOD_PRESETS)})")
        fixed_k = self.method == "coconut" and self.latent_steps is not None
        defaults = {"anchor_space": "core", "anchor_loss": "mse", **METHOD_PRESETS[self.method]}
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        problems = []
        for owners, knobs in METHOD_KNOBS.items():
            if self.method not in owners.split("+"):
                field_defaults = {f.name: f.default for f in fields(self)}
                problems += [f"{k} is a knob of {owners.replace('+', ' and ')}, not of method '{self.method}'"
                             for k in knobs if getattr(self, k) != field_defaults[k]]
        if self.method == "coconut":
            k = self.max_stage * self.thoughts_per_step
            if fixed_k and self.latent_steps != k:
                problems.append(f"coconut keeps max_stage * thoughts_per_step = {k} thoughts; latent_steps "
                                f"{self.latent_steps} contradicts it (leave it unset)")
            self.latent_steps = k
            if self.thoughts_per_step < 1 or self.max_stage < 1:
                problems.append("coconut needs thoughts_per_step >= 1 and max_stage >= 1")
            if self.steps_per_stage < 1 or self.steps <= self.max_stage * self.steps_per_stage:
                problems.append(f"coconut: steps ({self.steps}) must exceed max_stage * steps_per_stage "
                                f"({self.max_stage} * {self.steps_per_stage}) so the final stage (all steps "
                                f"replaced, the layout evaluation uses) is trained")
        if self.method == "icot_si":
            if self.latent_steps != 0:
                problems.append("icot_si answers without thoughts: latent_steps must be 0")
            if self.steps_per_stage < 1 or self.remove_per_stage < 1:
                problems.append("icot_si needs steps_per_stage >= 1 and remove_per_stage >= 1")
            if self.removal_lambda is not None and self.removal_lambda <= 0:
                problems.append(f"removal_lambda must be > 0 (or null for no smoothing), got {self.removal_lambda}")
        if self.method in RECIPES and (self.alpha > 0 or self.gamma > 0):
            problems.append(f"method '{self.method}' does not read the dumped teacher's targets (alpha, gamma must "
                            f"be 0); the fixed-teacher anchor variant is method lori with alpha: 0, anchor_space: full")
        if self.latent_steps < 0:
            problems.append(f"latent_steps must be >= 0, got {self.latent_steps}")
        if self.alpha > 0 and self.latent_steps == 0:
            problems.append("alpha > 0 needs latent_steps >= 1 (no thoughts to match)")
        if self.alpha < 0 or self.gamma < 0:
            problems.append("alpha and gamma must be >= 0")
        if self.init not in ("teacher", "base"):
            problems.append(f"init must be teacher | base, got {self.init!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def needs_targets(self) -> bool:
        return self.alpha > 0 or self.gamma > 0

    @property
    def feedback(self) -> str:
        """How a thought becomes the next input: Coconut feeds the hidden state back as is."""
        return "hidden" if self.method == "coconut" else "projection"


class TeacherTargets:
    """Per-example teacher statistics and anchors, from ``targets/train.zarr``."""

    def __init__(self, path: str, record_ids: list[str], covariance: str):
        group = open_store(path, ["core", "offsets", "anchors_core", "anchors", "example_id"], kind="targets")
        ids = [str(i) for i in read_array(group, "example_id", path)]
        if ids != record_ids:
            raise ArtifactError(f"{path}: example ids do not match the training records "
                                f"({len(ids)} vs {len(record_ids)} examples); rerun the targets stage")
        core, offsets = read_array(group, "core", path), read_array(group, "offsets", path)
        if core.dtype.kind != "f" or core.ndim != 3:
            raise ArtifactError(f"{path}: array 'core' must be float [token, rank_layer, rank_hidden], "
                                f"got {core.dtype} {core.shape}")
        if offsets.ndim != 1 or len(offsets) != len(ids) + 1 or offsets[0] != 0 or offsets[-1] != len(core) \
                or np.any(np.diff(offsets) < 0):
            raise ArtifactError(f"{path}: array 'offsets' does not index the {len(core)} tokens of 'core' "
                                f"for {len(ids)} examples; rerun the targets stage")
        self.core_shape = tuple(core.shape)
        self.lengths = torch.from_numpy(np.diff(offsets))
        means, covs = trajectory_moments(core, offsets, covariance)
        self.mean, self.cov = torch.from_numpy(means), torch.from_numpy(covs)
        self.anchor_core = torch.from_numpy(read_array(group, "anchors_core", path)[:, 0].astype(np.float32))
        self.anchor_full = torch.from_numpy(read_array(group, "anchors", path)[:, 0].astype(np.float32))
        self.attrs = dict(group.attrs)

    def to(self, device) -> "TeacherTargets":
        for name in ("mean", "cov", "anchor_core", "anchor_full"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def build_student(cfg: DistillConfig, teacher: str) -> tuple[LatentStudent, object]:
    model, tokenizer = load_checkpoint(teacher)
    if cfg.init == "base":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(model.config)
    student = LatentStudent(model, cfg.latent_steps, tokenizer.convert_tokens_to_ids(BOT),
                            tokenizer.convert_tokens_to_ids(EOT), feedback=cfg.feedback)
    return student, tokenizer


def plain_student_like(student: LatentStudent) -> LatentStudent:
    """A fresh, unsharded student of the same architecture (to receive FSDP-gathered weights)."""
    from transformers import AutoModelForCausalLM

    return LatentStudent(AutoModelForCausalLM.from_config(student.model.config), student.latent_steps,
                         student.bot_id, student.eot_id, feedback=student.feedback)


def make_loss_step(cfg: DistillConfig, student: LatentStudent, tokenizer, records, targets, factors, device):
    """The method's ``loss_step(indices) -> {loss, task, reason*, anchor}``."""
    device = torch.device(device)
    layers = factors.layers if factors is not None else None
    params = num_params(student)

    def loss_step(idx: list[int]) -> dict[str, torch.Tensor]:
        batch = student_batch(tokenizer, [records[i] for i in idx], cfg.latent_steps, idx).to(device)
        out = student(batch, layers if cfg.needs_targets else None)
        positions = batch.prompt_ids.numel() + len(idx) * cfg.latent_steps + batch.suffix_ids.numel()
        terms = {"task": out.task_loss, "flops": torch.tensor(step_flops(params, positions))}
        loss = out.task_loss.float()
        # statistics and normalisers in fp32 even under bf16 autocast (covariances lose too much in bf16)
        with torch.autocast(device.type, enabled=False):
            if cfg.alpha > 0:
                core = factors.project(out.thoughts.float())                       # [B, K, r_L, r_d]
                mean_s, cov_s = moments(core, cfg.covariance)
                valid = (targets.lengths[idx] > 0).to(device)
                terms.update(reason_loss(mean_s, cov_s, targets.mean[idx], targets.cov[idx], cfg.w_mean, cfg.w_cov, valid))
                loss = loss + cfg.alpha * terms["reason"]
            if cfg.gamma > 0:
                anchor = out.anchor.float()                                        # [B, L, d]
                if cfg.anchor_space == "core":
                    a_s, a_t = factors.project(anchor), targets.anchor_core[idx]
                else:
                    a_s, a_t = factors.normalize(anchor), factors.normalize(targets.anchor_full[idx])
                terms["anchor"] = anchor_loss(a_s, a_t, cfg.anchor_loss)
                loss = loss + cfg.gamma * terms["anchor"]
        terms["loss"] = loss
        return terms

    return loss_step


def run(cfg: DistillConfig, teacher: str, records_path: str, out: str, targets_path: str | None = None,
        factors_path: str | None = None, metrics: str | None = None,
        match: tuple[str, str, str] | None = None) -> list[dict]:
    """Train one student. ``match = (ref_metrics, base_metrics, by)`` sets ``cfg.steps`` so the
    student gets the ref student's training compute (:func:`lori.sweep.matched_steps`)."""
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
    # lori / no_cot students see no CoT text; the recipes train on it (teacher pass, curricula)
    check_training_records(records, records_path, need_cot=cfg.method in RECIPES)
    student, tokenizer = build_student(cfg, teacher)
    student.to(device).train()
    targets = factors = None
    if cfg.needs_targets:
        if not (targets_path and factors_path):
            raise ArtifactError(f"method '{cfg.method}' (alpha={cfg.alpha}, gamma={cfg.gamma}) needs --targets and --factors")
        factors, fattrs = load_factors(factors_path)
        check_factors_fit(factors, factors_path, student.model.config, teacher)
        targets = TeacherTargets(targets_path, [r.id for r in records], cfg.covariance)
        if targets.attrs.get("factors_config_hash") != fattrs.get("config_hash"):
            raise ArtifactError(f"{targets_path} was made from factors with config hash "
                                f"{targets.attrs.get('factors_config_hash')}, but {factors_path} has "
                                f"{fattrs.get('config_hash')}; rerun the targets stage")
        if targets.core_shape[1:] != factors.ranks:
            raise ArtifactError(f"{targets_path}: array 'core' has ranks {targets.core_shape[1:]}, but {factors_path} "
                                f"has ranks {factors.ranks}; rerun the targets stage")
        if list(targets.attrs.get("layers") or []) != factors.layers:
            raise ArtifactError(f"{targets_path} holds layers {targets.attrs.get('layers')}, but {factors_path} "
                                f"factorizes layers {factors.layers}; rerun the targets stage")
        factors, targets = factors.to(device), targets.to(device)
    log.info("student '%s': %.2fM parameters, K=%d, alpha=%g, gamma=%g, %d examples, device %s", cfg.method,
             num_params(student) / 1e6, cfg.latent_steps, cfg.alpha, cfg.gamma, len(records), device)
    if cfg.method in RECIPES:
        from lori.training import recipes

        recipe = recipes.build(cfg, student, tokenizer, records, device)
        loss_step, on_step = recipe.loss_step, recipe.on_step
    else:
        loss_step, on_step = make_loss_step(cfg, student, tokenizer, records, targets, factors, device), None
    ckpt = checkpoint_dir(out)   # resumable: a killed run continues from <out>.ckpt (lori.training.loop)
    run_id = fingerprint(asdict(cfg), teacher, records_path, targets_path, factors_path)
    rows = fit(student, loss_step, len(records), cfg, cfg.seed, metrics, desc=f"distill[{cfg.method}]",
               ckpt=ckpt, run_id=run_id, dist_info=info, on_step=on_step)
    student.eval()
    final = unsharded(student, info, lambda: plain_student_like(student))   # FSDP: gathered on rank 0
    if info.is_main:
        final.save(out, tokenizer, {"train_config.json": json.dumps(
            {**provenance(cfg), **({"compute_match": matched} if matched else {})}, indent=2)})
        discard_checkpoint(ckpt)
    cleanup(info)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    from lori.cli import runtime_of, stage_main, stage_summary

    def section(config, ns):
        # the method comes from the CLI; --config supplies common + that method's section
        method = getattr(ns, "method", "lori")
        return {**config["distill"]["common"], **config["distill"].get(method, {}), "method": method,
                **runtime_of(config)}

    cfg, ns = stage_main(DistillConfig, argv, __doc__,
                         [("--teacher", "teacher checkpoint dir (initialisation)"), ("--records", "teacher_cot records jsonl"),
                          ("--out", "student checkpoint dir"), ("--targets", "(optional) targets Zarr store"),
                          ("--factors", "(optional) factors Zarr store"), ("--metrics", "(optional) metrics jsonl"),
                          ("--match-ref", "(optional) metrics jsonl of the student whose compute to match"),
                          ("--match-base", "(optional) metrics jsonl of this method's plain run (cost of one step)"),
                          ("--match-by", "(optional) flops | wall (with --match-ref/--match-base)")],
                         section)
    if bool(ns.match_ref) != bool(ns.match_base):
        raise ArtifactError("--match-ref and --match-base go together")
    match = (ns.match_ref, ns.match_base, ns.match_by or "flops") if ns.match_ref else None
    rows = run(cfg, ns.teacher, ns.records, ns.out, ns.targets, ns.factors, ns.metrics, match)
    steps = rows[-1]["step"] if rows else cfg.steps     # a compute-matched student sets its own step count
    stage_summary(f"distill {cfg.method}", steps, "steps", f"final loss {rows[-1]['loss']:.4g}" if rows else "")


if __name__ == "__main__":
    main()
