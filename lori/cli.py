"""Shared plumbing for stage CLIs: argument parsing, logging, one-line errors."""
from __future__ import annotations

import logging
import sys
import time
from typing import Sequence, TypeVar

from lori.artifacts.store import ArtifactError
from lori.config import ConfigError, parse_stage_args
from lori.data.records import DataError

T = TypeVar("T")
USER_ERRORS = (ConfigError, DataError, ArtifactError, FileNotFoundError)
_stage_start = time.perf_counter()   # reset by stage_main: stage_summary's clock starts when the stage does


def _excepthook(exc_type, exc, tb):
    if issubclass(exc_type, USER_ERRORS):
        # bad input is the user's to fix: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.__excepthook__(exc_type, exc, tb)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def stage_main(cls: type[T], argv: Sequence[str] | None, doc: str | None,
               paths: Sequence[tuple[str, str]], stage: str | None = None):
    """Parse a stage's CLI into its config dataclass; set up logging and error reporting.
    ``stage`` names the stage whose knobs ``--config`` reads (:func:`lori.config.stage_args`)."""
    global _stage_start
    _stage_start = time.perf_counter()
    sys.excepthook = _excepthook
    setup_logging()
    cfg, ns = parse_stage_args(cls, argv, (doc or "").strip(), paths, stage)
    logging.getLogger("lori").info("%s: %s", cls.__name__, cfg)
    return cfg, ns


def stage_summary(stage: str, count: float | None = None, unit: str = "", metric: str = "") -> str:
    """Log the one line every stage ends with: wall time, throughput, main metric.

    ``count`` items of ``unit`` (steps, problems, tokens) were processed since :func:`stage_main`;
    e.g. ``done distill: 412.3 s, 2.43 steps/s (1000 steps); final loss 0.412``. The line starts
    with ``done`` so ``grep -h ^.*done results/<run>/logs -r`` lists a whole run's stages.
    """
    seconds = time.perf_counter() - _stage_start
    line = f"done {stage}: {seconds:.1f} s"
    if count:
        line += f", {count / max(seconds, 1e-9):.3g} {unit}/s ({count:g} {unit})"
    if metric:
        line += f"; {metric}"
    logging.getLogger("lori").info(line)
    return line
