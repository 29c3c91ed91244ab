"""Shared plumbing for stage CLIs: argument parsing, logging, one-line errors."""
from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence, TypeVar

from lori.config import ConfigError, parse_stage_args
from lori.data import DataError
from lori.io import ArtifactError

T = TypeVar("T")
USER_ERRORS = (ConfigError, DataError, ArtifactError, FileNotFoundError)


def _excepthook(exc_type, exc, tb):
    if issubclass(exc_type, USER_ERRORS):
        # bad input is the user's to fix: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.__excepthook__(exc_type, exc, tb)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def runtime_of(config: dict) -> dict:
    """The keys every model stage takes from a full config: seed, threads, device and the
    ``runtime`` section (a stage keeps those its config dataclass has)."""
    return {**{k: config[k] for k in ("seed", "threads", "device")}, **config.get("runtime", {})}


def stage_main(cls: type[T], argv: Sequence[str] | None, doc: str | None,
               paths: Sequence[tuple[str, str]], section: Callable[[dict], dict] | None = None):
    """Parse a stage's CLI into its config dataclass; set up logging and error reporting."""
    sys.excepthook = _excepthook
    setup_logging()
    cfg, ns = parse_stage_args(cls, argv, (doc or "").strip(), paths, section)
    logging.getLogger("lori").info("%s: %s", cls.__name__, cfg)
    return cfg, ns
