"""Progress when stderr is not a terminal (a pipe, a log, CI): plain lines every few percent with
an ETA, not a bar that shows nothing until the end (issue 23: `dfedit-train recognise` printed
nothing for 14+ minutes when piped)."""

import io
import re
import sys

from dfedit import progress
from dfedit.progress import LineProgress, progress_bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_line_every_few_percent_with_an_eta():
    clock, out = Clock(), io.StringIO()
    p = LineProgress(200, "sampling", stream=out, clock=clock)
    for _ in range(200):
        clock.t += 3.0  # 3 s a step: 10 minutes in all
        p.advance()
    p.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 100 // progress.LINE_EVERY  # 5%, 10%, ... 95%, then the final line
    assert lines[0] == "sampling: 5% (10/200), 0:30 elapsed, ETA 9:30"
    assert lines[9] == "sampling: 50% (100/200), 5:00 elapsed, ETA 5:00"
    assert lines[-1] == "sampling: 100% (200/200), done in 10:00"


def test_fast_loops_are_not_noisy_and_fields_are_shown():
    clock, out = Clock(), io.StringIO()
    p = LineProgress(1000, "train", info="loss {task.fields[loss]:.3f}", stream=out, clock=clock, loss=1.0)
    for i in range(1000):
        clock.t += 0.01  # 10 s in all: at most one line per LINE_MIN_S seconds
        p.advance(loss=0.5)
    p.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) <= 10 / progress.LINE_MIN_S + 1
    assert lines[-1] == "train: 100% (1000/1000)  loss 0.500, done in 0:10"


def test_a_resumed_run_counts_its_eta_from_the_steps_it_made():
    clock, out = Clock(), io.StringIO()
    p = LineProgress(100, "train", completed=50, stream=out, clock=clock)
    for _ in range(5):
        clock.t += 10.0
        p.advance()
    assert out.getvalue().splitlines()[0] == "train: 55% (55/100), 0:50 elapsed, ETA 7:30"


def test_progress_bar_prints_lines_when_stderr_is_not_a_terminal(monkeypatch):
    err = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(progress, "LINE_MIN_S", 0.0)
    with progress_bar(40, "stage I") as bar:
        for _ in range(40):
            bar.advance()
    lines = err.getvalue().splitlines()
    assert len(lines) == 20 and lines[-1].startswith("stage I: 100% (40/40), done in")
    assert all(re.search(r"ETA \d+:\d\d$", ln) for ln in lines[:-1])
