"""Greedy answers to a list of problems, scored: the one decoding-and-scoring path of every evaluation.

The ``evaluate`` stage (each benchmark) and the training loop's validation
(:mod:`lori.training.validation`) both call :func:`answer_rows`, so a validation accuracy logged
while training is measured exactly as the final test accuracy is. The model decides how it answers:
a :class:`~lori.model.latent.LatentStudent` thinks its K latent steps (K = 0: No-CoT, iCoT-SI) and
then answers; any other causal LM is the teacher and writes its chain of thought first
(:func:`lori.model.generate.generate_cot`).
"""
from __future__ import annotations

from lori.data.answers import extract, is_correct
from lori.data.records import Record, iter_batches
from lori.model.generate import generate_cot
from lori.model.latent import LatentStudent
from lori.model.sequences import student_batch
from lori.progress import tqdm  # tqdm that also writes lines into log files


def answer_rows(model, tokenizer, records: list[Record], batch_size: int, max_new_tokens: int, device,
                desc: str | None = None) -> list[dict]:
    """One row per problem: id, prediction, parsed, gold, correct, generated_tokens, latent_steps,
    latency_s, cot_steps (the ``eval/<method>/<bench>.jsonl`` row, :mod:`lori.artifacts.evaluation`;
    ``cot_steps`` is the reference CoT's step count, 0 when the dataset has none).

    The caller puts ``model`` in eval mode; decoding runs without gradients. ``desc`` shows a
    progress bar (none when None)."""
    if isinstance(model, LatentStudent):
        latent = model.latent_steps

        def generate(batch):
            return model.generate(student_batch(tokenizer, batch, latent).to(device), max_new_tokens, tokenizer)
    else:
        latent = 0

        def generate(batch):
            return generate_cot(model, tokenizer, [r.question for r in batch], max_new_tokens, device)

    rows = []
    for batch in tqdm(list(iter_batches(records, batch_size)), desc=desc, mininterval=5,
                      disable=None if desc else True):
        for r, g in zip(batch, generate(batch)):
            rows.append({"id": r.id, "prediction": g.text, "parsed": extract(g.text), "gold": r.answer,
                         "correct": is_correct(g.text, r.answer), "generated_tokens": g.tokens,
                         "latent_steps": latent, "latency_s": g.latency, "cot_steps": len(r.steps)})
    return rows
