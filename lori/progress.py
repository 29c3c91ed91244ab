"""Progress bars that also show in log files.

Every long loop uses ``tqdm(..., disable=None)``, which switches the bar off when stderr is
not a terminal; but that is exactly where Snakemake sends each job (``> results/<run>/logs/...
2>&1``), so a ten-minute ``teacher_cot`` logged nothing until it ended. This drop-in ``tqdm``
keeps the live bar on a terminal and, when stderr is a regular file, writes one plain line per
update, at most every ``LOG_INTERVAL`` seconds, instead of carriage-return redraws. Pipes
(subprocess captures, ``| head``) keep tqdm's own behaviour: no bar.
"""
from __future__ import annotations

import os
import stat
import sys

from tqdm import tqdm as _tqdm

LOG_INTERVAL = 30.0   # seconds between progress lines in a log file


class _Lines:
    """A file-like that turns tqdm's ``\\r`` redraws into whole lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").rstrip()
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _stderr_is_file() -> bool:
    try:
        return stat.S_ISREG(os.fstat(sys.stderr.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):   # replaced stderr without a descriptor (pytest capsys, ...)
        return False


def tqdm(iterable=None, *args, **kwargs):
    """``tqdm.tqdm`` with log-file lines (see the module docstring); same arguments."""
    if kwargs.get("disable", False) is None and _stderr_is_file():
        kwargs.update(disable=False, file=_Lines(sys.stderr), ascii=True,
                      mininterval=max(kwargs.get("mininterval", 0.1), LOG_INTERVAL))
    return _tqdm(iterable, *args, **kwargs)
