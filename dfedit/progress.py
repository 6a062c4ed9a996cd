"""The one progress-bar helper of dfedit and dfedit-train: rich bars for every long loop (sampling,
T5 prompts, evaluation, the recognisability judge, training), so `--quiet` turns them all off."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace

LINE_EVERY_PERCENT = 5  # without a terminal: one line per this many percent done...
LINE_EVERY_SECONDS = 600  # ...or after this long without one


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def _duration(s: float) -> str:
    s = int(round(s))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


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


class _Lines(Progress):
    """The bar for a stream that is not a terminal (nohup, a log file, CI): a line such as
    `train: 35% (18550/53000) epoch 3/1000 ..., 12m03s elapsed, ETA 22m10s` every few percent
    (and at least every ten minutes), and one at the end."""

    def __init__(self, total: int, description: str, completed: int, info: str | None, fields: dict, stream):
        super().__init__()
        self.total, self.description, self.done, self.start_done = max(int(total), 0), description, completed, completed
        self.info, self.fields, self.stream = info, dict(fields), stream
        self.t0 = self.last_t = time.monotonic()
        self.last_step, self.printed = self._step(), completed
        self.closed = False

    def _step(self) -> int:
        return int(100 * self.done / self.total // LINE_EVERY_PERCENT) if self.total else 0

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        self.fields.update(fields)
        step, now = self._step(), time.monotonic()
        if step > self.last_step or now - self.last_t >= LINE_EVERY_SECONDS:
            self.last_step, self.last_t = step, now
            self._line(now)

    def _line(self, now: float) -> None:
        pct = 100 * self.done / self.total if self.total else 100.0
        parts = [f"{self.description}: {pct:.0f}% ({self.done}/{self.total})"]
        if self.info is not None:
            try:
                parts.append(self.info.format(task=SimpleNamespace(fields=self.fields)))
            except (KeyError, AttributeError, ValueError, TypeError, IndexError):
                pass
        elapsed = now - self.t0
        tail = f"{_duration(elapsed)} elapsed"
        moved = self.done - self.start_done
        if 0 < moved and self.done < self.total:
            tail += f", ETA {_duration(elapsed / moved * (self.total - self.done))}"
        self.printed = self.done
        print(" ".join(parts) + ", " + tail, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.done != self.printed:  # where it stopped, unless that line was just printed
                self._line(time.monotonic())


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
    if not _is_terminal(sys.stderr):  # a log file or a pipe: plain lines, not a redrawn bar
        lines = _Lines(total, description, completed, info, fields, sys.stderr)
        try:
            yield lines
        finally:
            lines.close()
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
