"""Rich progress bars for every long loop; one object so `--quiet` turns them all off."""

from __future__ import annotations

import sys
from contextlib import contextmanager


class Progress:
    """A bar with `advance()`; a disabled one costs nothing per step."""

    def __init__(self, bar=None, task=None):
        self._bar, self._task = bar, task

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True):
    if not enabled:
        yield Progress()
        return
    # rich only when a bar is shown: a --quiet run (and every import of the package) skips ~0.1 s
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as _RichProgress

    console = Console(file=sys.stderr)
    bar = _RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield Progress(bar, task)
