"""The evaluation store: ``eval/<method>/<bench>.jsonl`` (one row per problem) and ``.json`` (summary).

Written by the ``evaluate`` stage, read by the report, ``lori compare`` and ``lori thoughts``.
This module is that store's single contract (docs/artifacts.md lists the same fields):

- a per-problem row holds :data:`ROW_FIELDS` and ``cot_steps`` (the reference CoT's step count, 0
  when the dataset has none; optional, rows of older versions lack it); a latent student's rows
  evaluated with the thought-shuffle test add ``correct_shuffled``;
- a summary holds :data:`SUMMARY_KEYS`, plus ``wall_s``, ``config_hash``, ``lori_version`` and,
  with the thought-shuffle test, a ``thought_shuffle`` block;
- the rows of a summary ``X.json`` are ``X.jsonl`` beside it (:func:`rows_path`).

Writes are atomic (a temporary sibling renamed into place); reads raise :class:`ArtifactError`
naming the file (and line) when it is missing, truncated or not an evaluation artifact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from lori.artifacts.store import ArtifactError, atomic_write_text, read_json, write_json

#: the fields of every per-problem row, in the order ``evaluate`` writes them
ROW_FIELDS = ("id", "prediction", "parsed", "gold", "correct", "generated_tokens", "latent_steps", "latency_s")
#: fields a row may add: the reference CoT's step count (rows of older versions lack it) and, for a
#: latent student under the thought-shuffle test, whether it answered right with another problem's thoughts
OPTIONAL_ROW_FIELDS = ("cot_steps", "correct_shuffled")
#: the keys every summary has (means are per problem; ci_* is the Wilson 95% interval of accuracy)
SUMMARY_KEYS = ("method", "bench", "n", "correct", "accuracy", "ci_low", "ci_high", "generated_tokens",
                "latent_steps", "latency_s")


def rows_path(summary_path: str | Path) -> Path:
    """The per-problem rows that belong to a summary: the same name with ``.jsonl``."""
    return Path(summary_path).with_suffix(".jsonl")


def summary_path(rows: str | Path) -> Path:
    """The summary that belongs to per-problem rows: the same name with ``.json``."""
    return Path(rows).with_suffix(".json")


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    write_json(path, summary)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every per-problem row of ``path``, each checked to hold :data:`ROW_FIELDS`."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: evaluation rows are missing (run the evaluate stage first)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path}:{number}: not valid JSON ({e.msg}); truncated or corrupt") from None
        missing = [k for k in ROW_FIELDS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ArtifactError(f"{path}:{number}: not an evaluation row (missing {', '.join(missing)})")
        rows.append(row)
    return rows


def read_summary(path: str | Path) -> dict[str, Any]:
    """An evaluation summary, checked to hold :data:`SUMMARY_KEYS`."""
    summary = read_json(path)
    missing = [k for k in SUMMARY_KEYS if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise ArtifactError(f"{path}: not an evaluation summary (missing {', '.join(missing)})")
    return summary
