"""Validation while training: accuracy on a held-out split, for accuracy-vs-compute curves.

A training stage given ``--val data/validation.jsonl`` and ``eval_every > 0`` builds an evaluator
with :func:`validation_evaluator` and hands it to :func:`lori.training.loop.fit`, which calls it
every ``eval_every`` steps and at the last step (in eval mode, without gradients or consuming
random numbers) and logs ``val_accuracy`` and ``val_n`` beside the cumulative ``train_s`` and
``flops_total``. Decoding and scoring are the evaluate stage's own (:func:`lori.model.answer.answer_rows`):
greedy, a latent student with its K thoughts (K = 0 for No-CoT and iCoT-SI), the teacher with its CoT.

The validation split is ours, not the paper's: ``data.validation`` in the config, generated like a
benchmark but excluding the training and benchmark questions (config/README.md).
"""
from __future__ import annotations

import logging
from typing import Callable

from lori.artifacts.store import ArtifactError
from lori.data.records import read_records
from lori.model.answer import answer_rows
from lori.training.loop import OptimConfig

log = logging.getLogger("lori.training.validation")


def validation_accuracy(model, tokenizer, records, batch_size: int, max_new_tokens: int, device) -> dict:
    """``{val_accuracy (fraction), val_n}`` of ``model`` on ``records`` (the caller sets eval mode)."""
    rows = answer_rows(model, tokenizer, records, batch_size, max_new_tokens, device)
    return {"val_accuracy": sum(r["correct"] for r in rows) / len(rows), "val_n": len(rows)}


def validation_evaluator(model, tokenizer, val_path: str | None, cfg: OptimConfig,
                         device) -> Callable[[], dict] | None:
    """The evaluator ``fit`` calls, or None when validation is off (``cfg.eval_every == 0``).

    ``eval_every > 0`` without a validation file is an error: the run was asked for curves."""
    if cfg.eval_every <= 0:
        if val_path:
            log.warning("--val %s given but eval_every is 0: no validation during training", val_path)
        return None
    if not val_path:
        raise ArtifactError(f"eval_every {cfg.eval_every} needs a validation split (--val, data/validation.jsonl; "
                            "set data.validation in the config) or eval_every 0")
    records = read_records(val_path)
    if not records:
        raise ArtifactError(f"{val_path}: no validation problems")
    log.info("validation: %d problems from %s every %d steps and at the last step", len(records), val_path,
             cfg.eval_every)
    return lambda: validation_accuracy(model, tokenizer, records, cfg.val_batch_size, cfg.val_max_new_tokens, device)
