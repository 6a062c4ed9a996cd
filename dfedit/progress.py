"""The one progress-bar helper of dfedit and dfedit-train: rich bars for every long loop (sampling,
T5 prompts, evaluation, the recognisability judge, training), so `--quiet` turns them all off."""

from __future__ import annotations

import sys
from contextlib import contextmanager


_noted: set[str] = set()


def note(msg: str) -> None:
    """One `note:` line on stderr, once per process for the same message: how dfedit read an input."""
    if msg not in _noted:
        _noted.add(msg)
        print(f"note: {msg}", file=sys.stderr, flush=True)


class Progress:
    """A bar with `advance()`; a disabled one costs nothing per step."""

    def __init__(self, bar=None, task=None):
        self._bar, self._task = bar, task

    def advance(self, n: int = 1, **fields) -> None:
        """Move the bar on by n steps; `fields`: new values for the bar's `info` text."""
        if self._bar is None:
            return
        if fields:
            self._bar.update(self._task, advance=n, **fields)
        else:
            self._bar.advance(self._task, n)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True, completed: int = 0,
                 info: str | None = None, **fields):
    """`description` [bar] done/total [info] elapsed remaining, on stderr.

    completed: steps already done (a resumed run). info: a rich format string for extra live
    figures between the count and the times, e.g. "loss {task.fields[loss]:.4f}", with `fields`
    as their first values and `Progress.advance(**fields)` to update them."""
    if not enabled:
        yield Progress()
        return
    # rich only when a bar is shown: a --quiet run (and every import of the package) skips ~0.1 s
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as _RichProgress

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if info is not None:
        columns.append(TextColumn(info))
    bar = _RichProgress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=sys.stderr),
                        transient=False)
    with bar:
        task = bar.add_task(description, total=total, completed=completed, **fields)
        yield Progress(bar, task)
