"""Baseline distill recipes: one small module per method, sharing the student, trainer and data.

Each module exposes ``build(cfg, student, tokenizer, records, device) -> Recipe``; :mod:`lori.distill`
dispatches on ``cfg.method`` (``RECIPES``) and runs the returned ``loss_step`` (and ``on_step``,
the curriculum hook) in the shared loop :func:`lori.training.loop.fit`. ``lori`` and ``no_cot`` stay in
:mod:`lori.distill` (they read the dumped teacher's targets).

- :mod:`lori.training.recipes.codi` — CODI (Shen et al. 2025): in-loop self-distillation of the pre-answer state.
- :mod:`lori.training.recipes.coconut` — Coconut (Hao et al. 2024): stage curriculum, hidden state fed back.
- :mod:`lori.training.recipes.icot_si` — iCoT-SI (Deng et al. 2024): stepwise removal of CoT tokens.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

RECIPES = ("codi", "coconut", "icot_si")


@dataclass
class Recipe:
    loss_step: Callable[[list[int]], dict[str, torch.Tensor]]   # key "loss" is optimised, the rest logged
    on_step: Callable[[int], bool] | None = None                 # called before each step; True = reset the optimizer


def build(cfg, student, tokenizer, records, device) -> Recipe:
    if cfg.method not in RECIPES:
        raise ValueError(f"no recipe module for method {cfg.method!r} (one of {', '.join(RECIPES)})")
    return importlib.import_module(f"lori.training.recipes.{cfg.method}").build(cfg, student, tokenizer, records, device)
