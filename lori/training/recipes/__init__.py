"""Training recipes: one module per student method, sharing the student, the loop and the data.

- :mod:`~lori.training.recipes.args` — each method's typed knobs (``ARGS``), torch-free;
- :mod:`~lori.training.recipes.base` — what a recipe returns (:class:`Recipe`) and is given
  (:class:`RecipeContext`);
- :mod:`~lori.training.recipes.registry` — ``RECIPES``: method -> ``build(args, ctx) -> Recipe``;
- one module per method: :mod:`lori <lori.training.recipes.lori>` (trajectory statistics + anchor),
  :mod:`no_cot <lori.training.recipes.no_cot>`, :mod:`codi <lori.training.recipes.codi>`,
  :mod:`coconut <lori.training.recipes.coconut>`, :mod:`icot_si <lori.training.recipes.icot_si>`,
  :mod:`pause <lori.training.recipes.pause>` (the pause-token control).

The loop (:func:`lori.training.loop.fit`) optimises the ``"loss"`` key of ``loss_step(indices)``
and logs every other key; ``on_step(step)`` runs before each step (a curriculum) and returns True
to reset the optimizer. This package's ``__init__`` imports nothing, so reading the Args stays torch-free.
"""
