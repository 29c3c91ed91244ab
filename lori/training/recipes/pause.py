"""Pause tokens (Goyal et al. 2023, "Think before you speak"), a control for the latent students.

The layout of a latent student, ``question || <bot> [K pause embeddings] <eot> #### answer <eos>``,
but thought k's input is a learned embedding ``pause[k]`` (:class:`lori.model.latent.LatentStudent`
with ``feedback: pause``), the same for every question: nothing is fed back from the hidden state.
The only loss term is the answer cross-entropy (LoRi's loss step with alpha = gamma = 0, like
No-CoT); the FLOPs count the K pause positions. Evaluated like every latent student (K extra
positions, no chain), it answers whether a latent chain helps beyond the extra positions.
``step_anchor > 0`` (ours) matches the teacher's CoT steps to the pause positions' states, as
LoRi's step anchors do to its thoughts: the same step information with no chain to carry it.
Knobs: :class:`~lori.training.recipes.args.PauseArgs`.
"""
from __future__ import annotations

from lori.training.recipes.args import LoriArgs, PauseArgs
from lori.training.recipes.base import Recipe, RecipeContext
from lori.training.recipes.lori import build as lori_build


def build(args: PauseArgs, ctx: RecipeContext) -> Recipe:
    # LoRi's answer-only loss step: K thought positions, no teacher statistics, no anchor, no curriculum
    return lori_build(LoriArgs(latent_steps=args.latent_steps, alpha=0.0, gamma=0.0, step_anchor=args.step_anchor,
                               step_summary=args.step_summary, step_anchor_space=args.step_anchor_space), ctx)
