"""No-CoT: the student answers right after the question (``question || <bot> <eot> #### answer``).

The same loss step as LoRi with K = 0 thoughts and alpha = gamma = 0, so the only term is the
answer cross-entropy; kept as its own entry so its defaults (:class:`~lori.training.recipes.args.NoCoTArgs`)
and its place in the registry are explicit.
"""
from __future__ import annotations

from lori.training.recipes.args import NoCoTArgs
from lori.training.recipes.base import Recipe, RecipeContext
from lori.training.recipes.lori import build as lori_build


def build(args: NoCoTArgs, ctx: RecipeContext) -> Recipe:
    return lori_build(args, ctx)
