"""``RECIPES``: method -> ``build(args, ctx) -> Recipe``. A plain dict; the distill stage dispatches on it."""
from __future__ import annotations

from typing import Callable

from lori.training.recipes import coconut, codi, icot_kd, icot_si, lori, no_cot, pause, sim_cot
from lori.training.recipes.base import Recipe, RecipeContext

RECIPES: dict[str, Callable[..., Recipe]] = {
    "lori": lori.build,
    "no_cot": no_cot.build,
    "codi": codi.build,
    "coconut": coconut.build,
    "icot_si": icot_si.build,
    "pause": pause.build,
    "sim_cot": sim_cot.build,
    "icot_kd": icot_kd.build,
}

__all__ = ["RECIPES", "Recipe", "RecipeContext"]
