"""Progress bars for the long loops (analysis, masking, refit, sensitivity, writing, evaluation, training), shown
only where a person is watching: the one progress mechanism of the package and its commands.

A bar appears when progress is enabled (the default when stderr is a terminal; ``--quiet`` turns it off) and
the loop runs longer than half a second, so small models and scripts never see one. tqdm draws it on stderr.
"""
from __future__ import annotations

import contextlib
import sys
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
SHOW_AFTER_SECONDS = 0.5
_enabled: bool | None = None  # None: decide by whether stderr is a terminal


def configure_progress(enabled: bool | None) -> None:
    """True/False force bars on/off; None shows them only when stderr is a terminal."""
    global _enabled
    _enabled = enabled


def progress_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(items: Iterable[T], description: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """``items`` unchanged, drawn as a bar on stderr when progress is enabled and the loop is slow."""
    if not progress_enabled():
        return items
    from tqdm import tqdm
    return tqdm(items, desc=description, total=total, unit=unit, delay=SHOW_AFTER_SECONDS, leave=False,
                file=sys.stderr, dynamic_ncols=True)


@contextmanager
def count_progress(total: int, description: str, unit: str = "it") -> Iterator[Callable[[int], None]]:
    """A callback ``advance(n)`` for loops that report counts (batches, steps); a bar of ``total`` when enabled,
    a no-op otherwise. Nothing is drawn before the first ``advance`` after the delay, so an error raised before
    the work starts stays a single line."""
    if not progress_enabled():
        yield lambda _: None
        return
    from tqdm import tqdm
    with tqdm(total=total, desc=description, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
              delay=SHOW_AFTER_SECONDS, leave=False, file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar.update


def byte_progress(total_bytes: int, description: str) -> "contextlib.AbstractContextManager[Callable[[int], None]]":
    """A callback ``advance(n_bytes)`` for writers; a bar in bytes when enabled, a no-op otherwise."""
    return count_progress(total_bytes, description, unit="B")
