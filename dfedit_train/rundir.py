"""The run directory's housekeeping: one trainer at a time (the lock), litter of interrupted saves,
the epoch log, and --restart's archive.

A run directory (`--out`) looks like
    OUT/.lock                             {"pid": ..., "host": ...} while a dfedit-train owns it
    OUT/latest.json                       {"checkpoint": "checkpoints/step-00001234", "step": 1234}
    OUT/checkpoints/step-00001234/        one checkpoint (checkpoint.py writes and resumes them)
    OUT/samples/epoch-0010.png            validation grids
    OUT/log.jsonl                         one line per epoch
    OUT/loss.png                          the loss curve drawn from log.jsonl (plot.py)
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from dfedit.files import atomic_write, human_size, pid_alive
from dfedit.errors import DfeditError
from dfedit.files import open_append, remove_stale_temps


def stderr_line(msg: str) -> None:
    """The default `log` of the run-directory functions: one line on stderr."""
    print(msg, file=sys.stderr, flush=True)


class RunLock:
    """OUT/.lock: one dfedit-train per run directory.

    The lock is an flock on OUT/.lock (released by the kernel when its holder dies, whatever kills
    it) and the file records the owner's pid, host and start time for the message a second
    trainer prints. Where flock is not supported, a lock whose pid no longer runs on this host is
    stale. A stale lock is taken over with a one-line notice. `release` removes OUT again if this
    lock created it and nothing else was written there.
    """

    def __init__(self, out: Path, log=stderr_line):
        self.out, self.path, self.log = Path(out), Path(out) / ".lock", log
        self.fd: int | None = None
        self.created: list[Path] = []

    def _owner(self, fd: int) -> dict:
        try:  # through the descriptor we opened: never a file a link points at
            d = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError, RecursionError):
            return {}

    def _open(self) -> int:
        """OUT/.lock, created if missing; never through a link, never a file with other names."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC |
                         getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise DfeditError(f"{self.path} is a symbolic link, not a lock file; dfedit-train never writes "
                                  "through a link: remove it and run again") from None
            raise DfeditError(f"cannot open the lock {self.path}: {e.strerror or e}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a plain file"
            raise DfeditError(f"{self.path} is {what}, not a lock file of its own; remove it and run again")
        return fd

    def _busy(self, owner: dict) -> DfeditError:
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
        since = f", started {owner['started']}" if owner.get("started") else ""
        return DfeditError(f"{self.out} is in use by another dfedit-train ({who}{since}); wait for it to finish "
                           f"or stop it, or train into another --out")

    def acquire(self) -> "RunLock":
        import fcntl

        self.created = []  # directories this lock creates, innermost first: removed again if left empty
        p = self.out.absolute()
        while not p.exists() and p != p.parent:
            self.created.append(p)
            p = p.parent
        self.out.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for _ in range(10):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                raise self._busy(owner) from None
            except OSError:  # no flock on this filesystem: fall back to the recorded pid
                flocked = False
            try:  # the file we locked may have been removed by its releasing owner meanwhile
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            owner = self._owner(fd)
            pid = owner.get("pid")
            if owner and pid != os.getpid():
                if not flocked and (owner.get("host") != host or (isinstance(pid, int) and pid_alive(pid))):
                    os.close(fd)
                    raise self._busy(owner)
                self.log(f"note: took over the lock of a dfedit-train that is no longer running (pid {pid} on "
                         f"{owner.get('host', '?')}, started {owner.get('started', '?')})")
            data = json.dumps({"pid": os.getpid(), "host": host,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}, indent=1).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            self.fd = fd
            return self
        raise DfeditError(f"could not take the lock {self.path}: it keeps changing")  # pragma: no cover

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        for d in self.created:  # only if empty: a run that failed before writing anything leaves nothing
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def clean_temps(out: Path, log=stderr_line) -> None:
    """Remove what dead writers left in OUT, OUT/checkpoints and OUT/samples: temporaries of the one
    shape dfedit.files makes (`.NAME.dfedit-PID-RANDOM.tmp`, files and step directories), nothing
    else; a user's `.notes.tmp` or `.draft.tmp/` is never touched."""
    freed, n = 0, 0
    for d in (out, out / "checkpoints", out / "samples"):
        if d.is_dir():
            k, size = remove_stale_temps(d, mine_too=True)
            n, freed = n + k, freed + size
    if n:
        log(f"note: removed {n} temporary file(s) left by an interrupted save ({human_size(freed)})")


def trim_log(out: Path, step: int, log=stderr_line) -> None:
    """Make log.jsonl agree with the checkpoint a run continues from: lines of steps past it (they
    will be trained again) and damaged lines (a kill mid-write) are dropped."""
    path = out / "log.jsonl"
    if path.is_symlink() or not path.is_file():  # a link planted there is not our log (appending refuses it)
        return
    keep, past, bad = [], 0, 0
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            s = e["step"]
            if not isinstance(s, int):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            bad += 1
            continue
        if s > step:
            past += 1
        else:
            keep.append(line)
    if past or bad:
        atomic_write(path, "".join(f"{x}\n" for x in keep).encode())
        why = ", ".join(x for x in (f"{past} past step {step} (they will be trained again)" if past else "",
                                    f"{bad} damaged" if bad else "") if x)
        log(f"note: log.jsonl: dropped {past + bad} line(s): {why}")


def archive_run(out: Path, log=stderr_line) -> Path | None:
    """--restart: move the run's checkpoints, latest.json, log and grids into OUT/previous-TIME/."""
    names = [n for n in ("checkpoints", "latest.json", "log.jsonl", "samples") if (out / n).exists()]
    if not names:
        return None
    dest = out / time.strftime("previous-%Y%m%d-%H%M%S")
    i = 1
    while dest.exists():
        dest, i = out / f"{dest.name.split('.')[0]}.{i}", i + 1
    dest.mkdir()
    for n in names:
        os.replace(out / n, dest / n)
    log(f"note: --restart: the previous run ({', '.join(names)}) was moved to {dest}")
    return dest


def read_log(run: Path) -> list[dict]:
    """The entries of RUN/log.jsonl in file order; a damaged line (a kill mid-write) is skipped."""
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            e = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(e, dict):
            rows.append(e)
    return rows


class EpochLog:
    """log.jsonl, one line per epoch; a failed write (disk full) is reported once, training goes on."""

    def __init__(self, path: Path, log):
        self.path, self.log, self.failed, self.f = path, log, False, None
        try:  # never through a link planted at log.jsonl; a directory there is a warning, as a full disk is
            self.f = open_append(path)
        except OSError as e:
            self.failed = True
            kind = "a directory" if path.is_dir() else "a link" if path.is_symlink() else (e.strerror or str(e))
            log(f"warning: cannot append to {path} ({kind}); epochs are not logged, training goes on")

    def write(self, entry: dict) -> None:
        if self.failed:
            return
        try:
            self.f.write(json.dumps(entry) + "\n")
            self.f.flush()
        except OSError as e:
            self.failed = True
            self.log(f"warning: cannot append to {self.path} ({e.strerror or e}); epochs are no longer logged")

    def close(self) -> None:
        try:
            if self.f is not None:
                self.f.close()
        except OSError:
            pass
