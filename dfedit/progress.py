"""The one progress-bar helper of dfedit and dfedit-train: rich bars for every long loop (sampling,
T5 prompts, evaluation, the recognisability judge, training), so `--quiet` turns them all off.

On a terminal the bar redraws in place. When stderr is not a terminal (a pipe, a log file, CI)
a redrawn bar shows nothing until the end, so the same loop prints plain lines instead: one each
time it passes another LINE_EVERY percent (at most one per LINE_MIN_S seconds), with the elapsed
time and an ETA, and one when it finishes."""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace

LINE_EVERY = 5  # percent between two progress lines when stderr is not a terminal
LINE_MIN_S = 2.0  # ... and seconds


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


def _clock(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class LineProgress:
    """`Progress` for a stream that is not a terminal: "train: 45% (450/1000) epoch 3/10 ...,
    2:01 elapsed, ETA 2:28" every LINE_EVERY percent, and a last line when done."""

    def __init__(self, total: int, description: str, completed: int = 0, info: str | None = None,
                 stream=None, clock=time.monotonic, **fields):
        self.total, self.description, self.info, self.fields = max(0, int(total)), description, info, dict(fields)
        self.done = self._start = int(completed)
        self.stream, self.clock = stream if stream is not None else sys.stderr, clock
        self._t0 = self._last = clock()
        self._next = self._next_pct(self._pct())

    def _pct(self) -> int:
        return 100 if self.total == 0 else min(100, math.floor(100 * self.done / self.total))

    @staticmethod
    def _next_pct(pct: int) -> int:
        return (pct // LINE_EVERY + 1) * LINE_EVERY

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        self.fields.update(fields)
        pct, now = self._pct(), self.clock()
        if pct >= 100 and self.done >= self.total:
            return  # the last line comes from finish()
        if pct >= self._next and now - self._last >= LINE_MIN_S:
            self._line(now)
            self._next = self._next_pct(pct)

    def _line(self, now: float, final: bool = False) -> None:
        self._last = now
        elapsed = now - self._t0
        parts = [f"{self.description}: {self._pct()}% ({self.done}/{self.total})"]
        if self.info:
            try:
                parts.append(self.info.format(task=SimpleNamespace(fields=self.fields)))
            except (KeyError, ValueError, TypeError):
                pass
        made = self.done - self._start
        if final:  # the loop ended: all done, or stopped early (a run that saves and exits)
            parts.append(f"done in {_clock(elapsed)}" if self.done >= self.total else f"stopped after {_clock(elapsed)}")
        else:
            eta = elapsed / made * (self.total - self.done) if made > 0 else None
            parts.append(f"{_clock(elapsed)} elapsed, ETA {'?' if eta is None else _clock(eta)}")
        print("  ".join(parts[:-1]) + ", " + parts[-1] if len(parts) > 1 else parts[0],
              file=self.stream, flush=True)

    def finish(self) -> None:
        if self.done > self._start:
            self._line(self.clock(), final=True)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


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
    if not _is_terminal(sys.stderr):
        lines = LineProgress(total, description, completed, info, **fields)
        yield lines
        lines.finish()
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
