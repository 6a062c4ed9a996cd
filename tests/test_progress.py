"""dfedit.progress without a terminal (nohup, a log file, CI): a plain line every few percent with
the time left, instead of a bar that only a terminal can redraw."""

import io
import re
import sys

from dfedit import progress


def lines_of(monkeypatch, total, steps, completed=0, **kw):
    buf = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", buf)
    with progress.progress_bar(total, "work", completed=completed, **kw) as bar:
        for _ in range(steps):
            bar.advance(loss=0.5)
    return buf.getvalue().splitlines()


def test_a_line_every_five_percent_with_the_time_left(monkeypatch):
    out = lines_of(monkeypatch, 200, 200, info="loss {task.fields[loss]:.2f}", loss=1.0)
    assert len(out) == 20 and out[0].startswith("work: 5% (10/200) loss 0.50, ")
    assert all(re.search(r"\d+m\d\ds elapsed, ETA \d+m\d\ds$", line) for line in out[:-1])
    assert out[-1].startswith("work: 100% (200/200)") and "ETA" not in out[-1]


def test_a_stopped_or_resumed_loop_says_where_it_is(monkeypatch):
    out = lines_of(monkeypatch, 200, 33)  # stopped at 16.5%: lines at 5, 10, 15 and where it stopped
    assert [line.split(",")[0] for line in out] == ["work: 5% (10/200)", "work: 10% (20/200)",
                                                    "work: 15% (30/200)", "work: 16% (33/200)"]
    out = lines_of(monkeypatch, 200, 10, completed=100)  # a resumed run counts from where it was
    assert out[0].startswith("work: 55% (110/200)")


def test_a_line_at_least_every_ten_minutes(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])

    def slow(bar):
        for _ in range(3):
            now[0] += progress.LINE_EVERY_SECONDS
            bar.advance()
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    with progress.progress_bar(10_000, "slow") as bar:
        slow(bar)
    assert len(buf.getvalue().splitlines()) == 3  # 0.03% done, but a line every ten minutes


def test_quiet_prints_nothing(monkeypatch):
    assert lines_of(monkeypatch, 100, 100, enabled=False) == []
