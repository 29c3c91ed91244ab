"""lori.training.budget: a student's training FLOPs planned before training equal what training logs."""
from __future__ import annotations

import pytest
import torch

from lori import distill
from lori.data.records import read_records
from lori.distill import DistillConfig
from lori.sweep import total_flops
from lori.training.budget import planned_flops
from lori.training.loop import batches
from lori.training.recipes.registry import RECIPES, RecipeContext


@pytest.mark.parametrize("method, knobs", [
    ("no_cot", {}),
    ("coconut", {"max_stage": 2, "steps_per_stage": 2, "thoughts_per_step": 1}),   # stages: the cost changes
    ("sim_cot", {"max_stage": 1, "steps_per_stage": 3, "thoughts_per_step": 2}),   # the decoder is counted
])
def test_planned_flops_equal_the_logged_total(tiny_teacher, tmp_path, method, knobs):
    cfg = DistillConfig(method=method, steps=6, batch_size=8, log_every=1, seed=3, threads=1, device="cpu",
                        checkpoint_every=0, **knobs)
    rows = distill.run(cfg, str(tiny_teacher.teacher), str(tiny_teacher.train), str(tmp_path / "s"))
    records = read_records(tiny_teacher.train)
    student, tok = distill.build_student(cfg, str(tiny_teacher.teacher))
    recipe = RECIPES[method](cfg.args, RecipeContext(student, tok, records, torch.device("cpu"), cfg.seed, cfg.steps))
    total, per_step = planned_flops(recipe.loss_step, recipe.on_step, batches(len(records), 8, cfg.seed), cfg.steps)
    assert total == pytest.approx(total_flops(rows), rel=1e-6)
    assert per_step == pytest.approx(total / cfg.steps)
    # sampled: the mean of the sampled steps times the steps, near the exact total
    sampled, _ = planned_flops(recipe.loss_step, recipe.on_step, batches(len(records), 8, cfg.seed), cfg.steps, 3)
    assert sampled == pytest.approx(total, rel=0.25)
    with pytest.raises(ValueError, match="steps must be"):
        planned_flops(recipe.loss_step, recipe.on_step, batches(len(records), 8, cfg.seed), 0)
