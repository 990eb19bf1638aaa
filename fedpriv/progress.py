"""Progress bars for long work: training rounds and attack iterations (issue #12).

A bar is drawn (with rich, on stderr, and removed when done) only where someone watches:
on a terminal, or when ``FEDPRIV_PROGRESS=1``; ``FEDPRIV_PROGRESS=0`` turns it off. Logs,
tests and sweeps run under a launcher see nothing, so their output stays one line per job.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

SETTINGS = ("auto", "0", "1")


def progress_enabled() -> bool:
    """Whether bars are drawn: ``FEDPRIV_PROGRESS`` (``auto``: only on a terminal)."""
    setting = os.environ.get("FEDPRIV_PROGRESS", "auto")
    if setting not in SETTINGS:
        raise ValueError(f"FEDPRIV_PROGRESS must be one of {SETTINGS}, got {setting!r}")
    return sys.stderr.isatty() if setting == "auto" else setting == "1"


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """Yields ``advance(steps)`` of a bar with the count, elapsed time and ETA, or ``None``
    when no bar is drawn (so callers skip whatever they would do only to feed it)."""
    if not progress_enabled():
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    # "1" draws even where stderr is not a terminal (a log file, a notebook's captured stream).
    console = Console(stderr=True, force_terminal=os.environ.get("FEDPRIV_PROGRESS") == "1" or None)
    with Progress(*columns, transient=True, console=console) as progress:
        task = progress.add_task(description, total=total)
        yield lambda steps=1: progress.advance(task, steps)
