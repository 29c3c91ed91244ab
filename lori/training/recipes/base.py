"""What a recipe is given and what it returns; every method's ``build(args, ctx)`` speaks these."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:   # annotations only
    import torch

    from lori.data.records import Record
    from lori.lowrank.maths import Factors
    from lori.model.latent import LatentStudent
    from lori.training.step_info import StepTargets

LossStep = Callable[[list[int]], "dict[str, torch.Tensor]"]


@dataclass
class Recipe:
    loss_step: LossStep                          # indices -> terms; key "loss" is optimised, the rest logged
    on_step: Callable[[int], bool] | None = None  # called before each step; True = reset the optimizer


@dataclass
class RecipeContext:
    """Everything a recipe builds its loss step from (resolved once by the distill stage)."""
    student: LatentStudent
    tokenizer: Any
    records: list[Record]
    device: torch.device
    seed: int                                    # the run's seed (curricula draw per-step randomness from it)
    steps: int                                   # optimizer steps of the run (schedules are checked against it)
    targets: Any = None                          # lori: the teacher's statistics (recipes.lori.TeacherTargets)
    factors: Factors | None = None               # lori: the teacher's low-rank factors
    step_targets: StepTargets | None = None      # step_anchor > 0: one teacher state per CoT step (step_info)
    teacher: str | None = None                   # the teacher checkpoint dir (icot_kd reads its hidden states)
