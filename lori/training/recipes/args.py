"""Each student method's own knobs: one typed dataclass per recipe, with its paper's defaults.

``ARGS`` maps a method to its ``Args`` class; adding a knob to one method means one field here
(with its default and a comment) and its entry in the config schema (``distill.<method>``, and
``$defs/variant`` for sweeps). The stage's config, its CLI and the config file's
``distill.<method>`` block give the knobs flat (``--alpha 0.5``); :func:`recipe_args` sorts them
to the method's class and refuses a knob that belongs to another method.

Torch-free on purpose: the Snakefile asks :attr:`LoriArgs.needs_targets` while it builds the
DAG. The loss steps that read these knobs are the recipe modules next to this one.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Literal


STEP_SUMMARIES = ("mean", "last", "result")
STEP_SPACES = ("core", "full")


def step_problems(args) -> list[str]:
    """The step-anchor knobs every latent method shares (lori.training.step_info)."""
    out = []
    if args.step_anchor < 0:
        out.append(f"step_anchor must be >= 0, got {args.step_anchor}")
    if args.step_summary not in STEP_SUMMARIES:
        out.append(f"step_summary must be {' | '.join(STEP_SUMMARIES)}, got {args.step_summary!r}")
    if args.step_anchor_space not in STEP_SPACES:
        out.append(f"step_anchor_space must be {' | '.join(STEP_SPACES)}, got {args.step_anchor_space!r}")
    return out


def decoder_problems(args) -> list[str]:
    """The SIM-CoT decoder knobs (``sim_cot``; ``codi`` and ``lori`` for SIM-CoT on their thoughts)."""
    out = []
    if args.decoder_weight < 0:
        out.append(f"decoder_weight must be >= 0, got {args.decoder_weight}")
    if args.decoder_init not in ("student", "scratch"):
        out.append(f"decoder_init must be student | scratch, got {args.decoder_init!r}")
    return out


@dataclass
class LoriArgs:
    """LoRi (ours, after the paper): ``L = L_task + alpha * L_reason + gamma * L_anchor``."""
    latent_steps: int = 6                # K continuous thoughts
    alpha: float = 1.0                   # weight of L_reason (trajectory mean + covariance in the core)
    gamma: float = 1.0                   # weight of L_anchor (pre-answer state vs the teacher's)
    w_mean: float = 1.0                  # mean term weight inside L_reason
    w_cov: float = 1.0                   # covariance term weight inside L_reason
    covariance: Literal["full", "per_layer"] = "full"   # cov of vec(Z) | one r_d x r_d cov per layer mode
    anchor_space: Literal["core", "full"] = "core"      # anchor in the low-rank core | on full normalised states
    anchor_loss: Literal["mse", "smooth_l1"] = "mse"    # anchor distance (normalised by the teacher's scale)
    # Our option (the paper has one pre-answer anchor): each CoT step's teacher core states,
    # summarised, matched in order to the thought at the step's place (step j of n -> thought
    # ceil((j+1) K / n) - 1); the thoughts then carry the intermediate results in sequence.
    step_anchor: float = 0.0             # weight of L_step (0 = off)
    # a step's summary: mean of its tokens' core | its last token's | the token predicting its result
    # (its last "="; in "<<2-10=3>>" the state that must hold 3 - the last token, ">>", mostly does not)
    step_summary: Literal["mean", "last", "result"] = "mean"
    # where the step anchor compares: in the low-rank core, or on the full normalised states of
    # the dumped layers (no projection: the same step information without the subspace)
    step_anchor_space: Literal["core", "full"] = "core"
    # Our option: Coconut's curriculum from the CoT student before LoRi's own layout. Stage
    # k = 1..cot_stages replaces the first k CoT steps by the K thoughts and keeps the remaining
    # steps and the answer as cross-entropy targets (L_reason on the thoughts throughout; L_anchor,
    # whose target is the teacher's pre-answer state, only in the final all-latent stage).
    cot_stages: int = 0                  # stages before the final one (0 = off: LoRi as published)
    steps_per_stage: int = 200           # optimizer steps per stage (with cot_stages > 0)
    # a thought fed back as the next input: the last hidden state through the projection MLP, or
    # (our option, Coconut's way) the last hidden state itself
    feedback: Literal["projection", "hidden"] = "projection"
    # Our option, SIM-CoT's auxiliary decoder on LoRi's thoughts (training only): thought k (as fed)
    # decodes CoT step k, the last thought the remaining steps joined; 0 = off (LoRi as published)
    decoder_weight: float = 0.0
    decoder_init: Literal["student", "scratch"] = "student"

    @property
    def needs_targets(self) -> bool:
        """Reads the dumped teacher's targets and factors."""
        return self.alpha > 0 or self.gamma > 0 or self.step_anchor > 0

    def problems(self, steps: int) -> list[str]:
        out = []
        if self.latent_steps < 0:
            out.append(f"latent_steps must be >= 0, got {self.latent_steps}")
        if (self.alpha > 0 or self.step_anchor > 0 or self.decoder_weight > 0) and self.latent_steps == 0:
            out.append("alpha > 0, step_anchor > 0 or decoder_weight > 0 needs latent_steps >= 1 "
                       "(no thoughts to match)")
        if self.alpha < 0 or self.gamma < 0 or self.step_anchor < 0:
            out.append("alpha, gamma and step_anchor must be >= 0")
        out += step_problems(self) + decoder_problems(self)
        if self.feedback not in ("projection", "hidden"):
            out.append(f"feedback must be projection | hidden, got {self.feedback!r}")
        if self.cot_stages < 0 or self.steps_per_stage < 1:
            out.append("cot_stages must be >= 0 and steps_per_stage >= 1")
        elif self.cot_stages > 0 and self.latent_steps == 0:
            out.append("cot_stages > 0 needs latent_steps >= 1 (the stages replace CoT steps by thoughts)")
        elif self.cot_stages > 0 and steps <= self.cot_stages * self.steps_per_stage:
            out.append(f"steps ({steps}) must exceed cot_stages * steps_per_stage ({self.cot_stages} * "
                       f"{self.steps_per_stage}) so the final stage (the layout evaluation uses) is trained")
        return out


@dataclass
class NoCoTArgs(LoriArgs):
    """No-CoT: answer right after the question; LoRi's loss with K = 0 and alpha = gamma = 0 (answer CE only)."""
    latent_steps: int = 0
    alpha: float = 0.0
    gamma: float = 0.0


@dataclass
class CodiArgs:
    """CODI (Shen et al. 2025): ``L = L_student + distill_weight * L_KD + teacher_weight * L_teacher``."""
    latent_steps: int = 6                # K continuous thoughts (paper: 6)
    distill_weight: float = 1.0          # beta (paper: 1 for GPT-2, 20 for LLaMA-1B)
    teacher_weight: float = 1.0          # gamma, weight of the teacher pass's CoT cross-entropy (paper: 1)
    include_last_step: bool = False      # keep the CoT's last step in the teacher pass (CODI drops it)
    # Our option, LoRi's step anchors on CODI's thoughts (lori.training.step_info; 0 = CODI as published)
    step_anchor: float = 0.0             # weight of L_step
    step_summary: Literal["mean", "last", "result"] = "mean"
    step_anchor_space: Literal["core", "full"] = "core"
    # SIM-CoT on CODI (Wei et al. 2025's second setting): an auxiliary decoder, training only, decodes
    # thought k (as fed) into CoT step k (the last thought: the remaining steps joined); 0 = CODI as published
    decoder_weight: float = 0.0
    decoder_init: Literal["student", "scratch"] = "student"

    feedback = "projection"

    @property
    def needs_targets(self) -> bool:
        """The teacher pass runs in the loop; only step anchors read the dumped teacher's targets."""
        return self.step_anchor > 0

    def problems(self, steps: int) -> list[str]:
        out = [f"latent_steps must be >= 1, got {self.latent_steps}"] if self.latent_steps < 1 else []
        return out + decoder_problems(self) + step_problems(self)


@dataclass
class CoconutArgs:
    """Coconut (Hao et al. 2024): stage k replaces the first k CoT steps by k * c thoughts."""
    thoughts_per_step: int = 2           # c: thoughts replacing one CoT step (paper: 2 on GSM8K)
    max_stage: int = 3                   # stages that replace steps; then all steps go (paper: 3)
    steps_per_stage: int = 200           # optimizer steps per stage (the paper's 3 epochs)
    reset_optimizer: bool = True         # reset AdamW at each stage boundary (paper: yes)
    latent_steps: int | None = None      # fixed by the curriculum: max_stage * c (set only to restate it)
    # Our option, LoRi's step anchors on Coconut's thoughts (lori.training.step_info; 0 = Coconut as
    # published): at stage k the k replaced steps are matched to their thoughts, then all steps
    step_anchor: float = 0.0             # weight of L_step
    step_summary: Literal["mean", "last", "result"] = "mean"
    step_anchor_space: Literal["core", "full"] = "core"

    feedback = "hidden"                  # the last hidden state is fed back as is (no projection)

    @property
    def needs_targets(self) -> bool:
        """Only step anchors read the dumped teacher's targets."""
        return self.step_anchor > 0

    def __post_init__(self):
        self._given_k = self.latent_steps
        self.latent_steps = self.max_stage * self.thoughts_per_step

    def problems(self, steps: int) -> list[str]:
        out = []
        if self._given_k is not None and self._given_k != self.latent_steps:
            out.append(f"coconut keeps max_stage * thoughts_per_step = {self.latent_steps} thoughts; latent_steps "
                       f"{self._given_k} contradicts it (leave it unset)")
        if self.thoughts_per_step < 1 or self.max_stage < 1:
            out.append("coconut needs thoughts_per_step >= 1 and max_stage >= 1")
        out += step_problems(self)
        if self.steps_per_stage < 1 or steps <= self.max_stage * self.steps_per_stage:
            out.append(f"coconut: steps ({steps}) must exceed max_stage * steps_per_stage ({self.max_stage} * "
                       f"{self.steps_per_stage}) so the final stage (all steps replaced, the layout evaluation "
                       f"uses) is trained")
        return out


@dataclass
class IcotSIArgs:
    """iCoT-SI (Deng et al. 2024): CoT tokens removed from the front on a schedule until none is left."""
    remove_per_stage: int = 8            # Delta: CoT tokens removed per stage (paper: 8 per epoch)
    steps_per_stage: int = 100           # optimizer steps standing in for the paper's epoch
    removal_lambda: float | None = 4.0   # removal smoothing P(o) ~ exp(-lambda o) (paper: 4); None = off
    remove_all_beyond: int | None = None  # remove all CoT once this many are scheduled (paper GSM8K: 39)
    reset_optimizer: bool = True         # reset AdamW whenever the scheduled count grows (paper: yes)
    latent_steps: int = 0                # answers without thoughts (the No-CoT layout); only 0 is valid

    feedback = "projection"
    needs_targets = False

    def problems(self, steps: int) -> list[str]:
        out = []
        if self.latent_steps != 0:
            out.append("icot_si answers without thoughts: latent_steps must be 0")
        if self.steps_per_stage < 1 or self.remove_per_stage < 1:
            out.append("icot_si needs steps_per_stage >= 1 and remove_per_stage >= 1")
        if self.removal_lambda is not None and self.removal_lambda <= 0:
            out.append(f"removal_lambda must be > 0 (or null for no smoothing), got {self.removal_lambda}")
        return out


@dataclass
class PauseArgs:
    """Pause tokens (Goyal et al. 2023), a control: K learned filler input embeddings where a latent
    student has its thoughts, nothing fed back from the hidden state; answer cross-entropy only
    (LoRi's loss step with alpha = gamma = 0)."""
    latent_steps: int = 6                # K pause embeddings (ours: LoRi's default K, as many extra positions)
    # Our option, the step anchors on the pause positions' states (lori.training.step_info): the same
    # step information as a latent student's, without a chain to carry it (0 = pause tokens as published)
    step_anchor: float = 0.0
    step_summary: Literal["mean", "last", "result"] = "mean"
    step_anchor_space: Literal["core", "full"] = "core"

    feedback = "pause"                   # thought k's input is the learned pause[k], whatever the question
    alpha = gamma = 0.0                  # fixed: no teacher statistics, no pre-answer anchor
    cot_stages = 0                       # fixed: the final layout from the first step

    @property
    def needs_targets(self) -> bool:
        return self.step_anchor > 0

    def problems(self, steps: int) -> list[str]:
        out = [f"pause needs latent_steps >= 1 (K pause embeddings), got {self.latent_steps}"] \
            if self.latent_steps < 1 else []
        return out + step_problems(self)


@dataclass
class SimCotArgs(CoconutArgs):
    """SIM-CoT on Coconut (Wei et al. 2025): Coconut's curriculum plus an auxiliary decoder, used in
    training only, that decodes each group of c thoughts into the CoT step it replaces."""
    decoder_weight: float = 1.0          # weight of L_decoder (reference code: 1)
    # the decoder's start: a copy of the student's starting weights (ours; the reference loads the
    # pretrained base LM) | the same architecture freshly initialised
    decoder_init: Literal["student", "scratch"] = "student"

    def problems(self, steps: int) -> list[str]:
        return [p.replace("coconut", "sim_cot") for p in super().problems(steps)] + decoder_problems(self)


@dataclass
class IcotKDArgs:
    """iCoT-KD (Deng et al. 2023): a mind-reading student answers from the teacher's states along its
    CoT's diagonal, an emulator learns to predict those states from the question, then both are
    coupled and trained end to end on the answer; phases in this order within ``steps``."""
    mind_reading_steps: int = 300        # phase 1: the student (+ its reading MLPs) answers from the teacher's states
    emulation_steps: int = 300           # phase 2: the emulator regresses the teacher's states (the rest: coupled)
    # the teacher's positions: layer l reads position round(first + l (last - first) / (L - 1)) with
    # first = the question's last token and last = the token before the answer (the paper's "diagonal");
    # first_column = every layer at the question's last token, last_column = every layer at the token
    # before the answer (the reference code's other choices)
    diagonal: Literal["diagonal", "first_column", "last_column"] = "diagonal"
    mixture_size: int = 1                # emulator's mixture components (1 = none; reference code's --mixture_size)
    mixture_temperature: float = 0.05    # softmax temperature over the components (reference code: 0.05)
    fix_emulator: bool = False           # phase 3 trains the student only (reference code's --fix_emulator)
    reset_optimizer: bool = True         # fresh AdamW state at each phase (each phase is its own run in the paper)
    latent_steps: int = 0                # answers without thoughts (the No-CoT layout); only 0 is valid

    feedback = "projection"
    needs_targets = False

    def problems(self, steps: int) -> list[str]:
        out = []
        if self.latent_steps != 0:
            out.append("icot_kd answers without thoughts: latent_steps must be 0")
        if self.mind_reading_steps < 0 or self.emulation_steps < 0:
            out.append("mind_reading_steps and emulation_steps must be >= 0")
        elif steps <= self.mind_reading_steps + self.emulation_steps:
            out.append(f"icot_kd: steps ({steps}) must exceed mind_reading_steps + emulation_steps "
                       f"({self.mind_reading_steps} + {self.emulation_steps}) so the coupled system (what "
                       f"evaluation runs) is trained")
        if self.diagonal not in ("diagonal", "first_column", "last_column"):
            out.append(f"diagonal must be diagonal | first_column | last_column, got {self.diagonal!r}")
        if self.mixture_size < 1:
            out.append(f"mixture_size must be >= 1, got {self.mixture_size}")
        if self.mixture_temperature <= 0:
            out.append(f"mixture_temperature must be > 0, got {self.mixture_temperature}")
        return out


RecipeArgs = LoriArgs | CodiArgs | CoconutArgs | IcotSIArgs | PauseArgs | SimCotArgs | IcotKDArgs
#: method -> its knobs; the plain registry every caller dispatches on (no string-keyed ownership)
ARGS: dict[str, type] = {"lori": LoriArgs, "no_cot": NoCoTArgs, "codi": CodiArgs, "coconut": CoconutArgs,
                         "icot_si": IcotSIArgs, "pause": PauseArgs, "sim_cot": SimCotArgs,
                         "icot_kd": IcotKDArgs}


def knob_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def owners(knob: str) -> list[str]:
    """Methods that have ``knob``."""
    return [m for m, cls in ARGS.items() if knob in knob_names(cls)]


ALL_KNOBS: tuple[str, ...] = tuple(dict.fromkeys(k for cls in ARGS.values() for k in knob_names(cls)))


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "not given: the method's default" (None cannot say it: ``removal_lambda: null`` means smoothing off)
UNSET = _Unset()


def _admits_none(cls: type, knob: str) -> bool:
    tp = typing.get_type_hints(cls)[knob]
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def recipe_args(values: dict, steps: int | None = None) -> RecipeArgs:
    """The typed knobs of ``values["method"]`` from a flat dict (a config block, a sweep
    variant's merged knobs, the CLI). Keys that are no method's knob (``steps``, ``lr``...) are
    ignored, and so are :data:`UNSET` values and ``None`` for a knob whose type has no ``None``
    (both mean "the method's default"); a knob of another method, or an invalid value, raises one
    ``ValueError`` listing every problem. ``steps`` (default ``values["steps"]``) is checked
    against the curricula."""
    method = values.get("method", "lori")
    if method not in ARGS:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(ARGS)})")
    cls = ARGS[method]
    own = set(knob_names(cls))
    given = {k: v for k, v in values.items() if k in ALL_KNOBS and v is not UNSET
             and (v is not None or (k in own and _admits_none(cls, k)))}
    problems = [f"{k} is a knob of {' and '.join(owners(k))}, not of method '{method}'"
                for k in given if k not in own]
    if method not in ("lori", "no_cot") and (given.get("alpha") or given.get("gamma")):
        problems.append(f"method '{method}' does not read the dumped teacher's targets (alpha, gamma must be 0); "
                        "the fixed-teacher anchor variant is method lori with alpha: 0, anchor_space: full")
    args = cls(**{k: v for k, v in given.items() if k in own})
    problems += args.problems(steps if steps is not None else values.get("steps", 1000))
    if problems:
        raise ValueError("; ".join(dict.fromkeys(problems)))
    return args
