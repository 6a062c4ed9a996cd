"""SIGINT and SIGTERM for dfedit-train, in three phases (imports only `os`, `signal`, `sys`).

1. Start-up (imports, option parsing, before anything is written): a signal ends the process at
   once with one line and the conventional code (130 for SIGINT, 143 for SIGTERM). A
   KeyboardInterrupt raised inside `import torch` would print a traceback, could be swallowed by
   library code, or abort in C++; leaving straight away with `os._exit` does none of that, and
   there is nothing to clean up yet.
2. Preparation (lock, data, text embeddings): SIGINT raises KeyboardInterrupt and SIGTERM raises
   `Terminated`, so `finally` blocks remove temporaries and release the run lock; the CLI prints
   one line and exits 130 / 143.
3. Training (`StopRequest` in train.py): the handler only records the signal; the loop finishes
   the current optimizer step, saves a checkpoint at that step boundary and exits 130 / 143 with
   one line. Stopping between steps keeps the resumed run bit-exact. A second signal of either
   kind stops at once without saving (the previous checkpoint is intact).

`docker stop`, Kubernetes and Slurm pre-emption send SIGTERM; Ctrl-C sends SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Terminated(BaseException):
    """SIGTERM outside the training loop (a BaseException, like KeyboardInterrupt, so that no
    `except Exception` swallows it)."""


# The last signal phase 2 raised for: library code with a bare `except:` (some imports have them)
# could swallow the exception; the training loop then still sees the request and stops at once.
PENDING: dict = {"signum": None}


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install_startup_handlers(prog: str = "dfedit-train") -> None:
    """Phase 1: leave at once, with one line, on SIGINT/SIGTERM."""
    if not _in_main_thread():
        return

    def leave(signum, frame):
        os.write(2, f"{prog}: error: {'interrupted' if signum == signal.SIGINT else 'terminated'} while "
                    f"starting; nothing was written\n".encode())
        os._exit(EXIT_CODES.get(signum, 1))

    for s in EXIT_CODES:
        signal.signal(s, leave)


def _raise(signum, frame):
    PENDING["signum"] = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated()


def install_raising_handlers() -> None:
    """Phase 2: SIGINT -> KeyboardInterrupt, SIGTERM -> Terminated."""
    PENDING["signum"] = None
    if not _in_main_thread():
        return
    for s in EXIT_CODES:
        signal.signal(s, _raise)


class StopRequest:
    """Phase 3: remembers the first SIGINT/SIGTERM; the training loop polls `signum` between steps.

    Used as a context manager; restores the previous handlers on exit. Outside the main thread
    (where Python cannot install handlers) it does nothing and `signum` stays None.
    """

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now, without saving
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise Terminated()
        self.signum = signum

    def __enter__(self):
        self.signum = PENDING["signum"]  # a phase-2 signal that library code swallowed
        if _in_main_thread():
            for s in EXIT_CODES:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
        return False

    @property
    def name(self) -> str:
        return NAMES.get(self.signum, str(self.signum))

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 1)


def running_as_program(module_name: str) -> bool:
    """True when this process is the `dfedit-train` command (console script, `python -m
    dfedit_train`, or `-m dfedit_train.cli`), not a test or a library importing the CLI module."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return (module_name == "__main__" or argv0 in ("dfedit-train", "dfedit-train.exe")
            or sys.argv[0].endswith(os.path.join("dfedit_train", "__main__.py")))
