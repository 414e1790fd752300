"""One logger for the whole package, with graded verbosity (Polygraphy style).

Library code logs through ``LOGGER``; only the CLI decides how much reaches the terminal (``configure``):
quiet = errors only, normal = warnings, verbose (``-v``) = one line per pipeline pass with its wall time and
the process's peak memory, debug (``-vv``) = everything. Messages go to stderr, so stdout stays clean for
``--json``.
"""
from __future__ import annotations

import logging
import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator

LOGGER = logging.getLogger("deprune_onnx")
QUIET, NORMAL, VERBOSE, DEBUG = -1, 0, 1, 2
_LEVELS = {QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.INFO, DEBUG: logging.DEBUG}
_LETTERS = {logging.DEBUG: "D", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
            logging.CRITICAL: "C"}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"deprune-onnx [{_LETTERS.get(record.levelno, '?')}] {record.getMessage()}"


def configure(verbosity: int) -> None:
    """Send the package's log records to the current stderr at the level ``verbosity`` selects.

    Replaces any handler a previous call installed (the CLI may run several times in one process, e.g. tests).
    """
    for handler in list(LOGGER.handlers):
        LOGGER.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    LOGGER.addHandler(handler)
    LOGGER.setLevel(_LEVELS[max(QUIET, min(DEBUG, verbosity))])
    LOGGER.propagate = False


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


@contextmanager
def timed_pass(name: str) -> Iterator[None]:
    """Log ``pass NAME: T s (peak RSS M MB)`` at verbose level when the block ends (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        LOGGER.info("pass %-8s %7.3f s   (peak RSS %.0f MB)", name, time.perf_counter() - start, peak_rss_mb())
