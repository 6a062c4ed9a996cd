"""Writing files: the one primitive every output of dfedit and dfedit-train goes through.

Output directories may be shared (a run directory on a group disk, /tmp), and anyone who can write
into one can plant links in it. So nothing here opens a name it did not just create itself:

* a temporary gets an unpredictable name beside its target, `.TARGET.dfedit-PID-RANDOM.tmp`
  (RANDOM: 16 hex digits from `secrets`), created with O_CREAT | O_EXCL | O_NOFOLLOW: a link, or
  anything else, already at that name makes the create fail and another name is drawn;
* it is written, fsync'd and renamed over the target: a rename replaces a link that sits at the
  target, it never writes through it;
* temporary directories (a checkpoint being written, an export) have the same shape and are made
  with mkdir, which fails on an existing name, so the files inside are ours alone;
* an appended file (log.jsonl) is opened with O_NOFOLLOW and must be a plain file with one link.

Clean-up (`remove_stale_temps`) removes only names of exactly that shape (`TEMP_RE`, the `dfedit`
marker included) that are a plain file or a real directory owned by this user and whose writer no
longer runs: a user's `.notes.tmp` or `.draft.tmp/` is never touched.

A failed write is one sentence (`write_error`): what could not be written, where and why, and for
a full disk how much space it needs and how much is free. `writable_dir` says before a run why a
directory cannot be written into; `read_json_file` reads a JSON file we did not necessarily write,
any failure one sentence naming it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path

from .errors import DfeditError

TEMP_RE = re.compile(r"^\.(?P<target>.+)\.dfedit-(?P<pid>\d+)-(?P<rand>[0-9a-f]{16})\.tmp$")

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _file(fd: int, path: Path):
    """The file object a writer writes through. Tests replace it to plant a full disk at a chosen
    byte (nothing else in the code base writes a file behind its back)."""
    return os.fdopen(fd, "wb")


def temp_name(target: str | os.PathLike) -> Path:
    """A fresh temporary name for `target`, in its directory, in the one shape clean-up knows."""
    t = Path(target)
    return t.with_name(f".{t.name}.dfedit-{os.getpid()}-{secrets.token_hex(8)}.tmp")


def temp_owner(name: str) -> int | None:
    """The writer's pid in one of our temporary names; None for any other name."""
    m = TEMP_RE.match(name)
    return int(m["pid"]) if m else None


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Create `path`, which must not exist (not even as a link), write `data` and fsync it, so that
    what is renamed into place afterwards is on the disk, not only in the page cache. A failed
    write removes the partial file."""
    fd = os.open(path, _NEW, 0o666)
    try:
        with _file(fd, Path(path)) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise


def new_temp(target: str | os.PathLike, data: bytes) -> Path:
    """`data` in a new temporary beside `target` (see the module docstring); returns its path."""
    for _ in range(100):
        tmp = temp_name(target)
        try:
            write_file(tmp, data)
            return tmp
        except FileExistsError:  # taken (perhaps by a planted link): draw another name, touch nothing
            continue
        except BaseException:  # a failed write (disk full): the partial temporary is ours, remove it
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
    raise FileExistsError(errno.EEXIST, "could not create a temporary file", str(target))  # pragma: no cover


def make_temp_dir(target: str | os.PathLike) -> Path:
    """A new, empty temporary directory beside `target`, made by us (mkdir fails on any existing name)."""
    for _ in range(100):
        tmp = temp_name(target)
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a temporary directory", str(target))  # pragma: no cover


def atomic_write(path: str | os.PathLike, data: bytes, exclusive: bool = False) -> None:
    """The one atomic writer: `data` to a new temporary beside `path`, fsync'd, then renamed over
    `path`, so readers see the old file or the new one, never part of either, and a link at `path`
    is replaced, never written through.

    exclusive: never replace an existing `path` (FileExistsError instead), decided atomically at
    publish time, so two processes that picked the same name cannot overwrite each other.
    The temporary is removed whatever happens (disk full, Ctrl-C).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp(path, data)
    try:
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic: fails if path exists (a link too)
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: reserve the name, then fill it
            os.close(os.open(path, _NEW, 0o666))
            os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def open_append(path: str | os.PathLike):
    """`path` opened for appending (created if missing), refusing a link (ELOOP) and anything that
    is not a plain file with a single name (a hard link to someone else's file)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) |
                 getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0), 0o666)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EPERM, "not a plain file of its own (a link or a special file)", str(path))
    return os.fdopen(fd, "a")


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not supported everywhere (some network filesystems): best effort
        pass


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_dir(new: Path, dest: Path) -> None:
    """Put directory `new` in place of directory `dest` with one atomic exchange of the two names,
    so no reader ever sees a mix of both; `new` then holds the old directory, for the caller to
    remove. Where the exchange is unsupported: two renames (in between, `dest` is missing for an
    instant, never mixed)."""
    if _exchange(new, dest):
        return
    old = temp_name(dest)
    os.replace(dest, old)
    os.replace(new, dest)
    os.replace(old, new)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` is running on this machine (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # Linux: a killed child that nobody reaped yet is a zombie, not a writer
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temps(directory: str | os.PathLike, max_age_s: float = 86400.0,
                       mine_too: bool = False) -> tuple[int, int]:
    """Remove our temporaries (TEMP_RE) that dead writers left in `directory`: (how many, bytes).

    Only plain files and real directories owned by this user, never a link or another name. A
    temporary of a live process is kept unless it is older than `max_age_s` (pids get reused);
    mine_too: also this process's own (a start-up clean-up, before this process wrote any)."""
    n = freed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0, 0
    for name in names:
        pid = temp_owner(name)
        if pid is None:
            continue
        p = Path(directory) / name
        try:
            st = p.lstat()
            if st.st_uid != os.getuid() or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                continue
            if (pid != os.getpid() or not mine_too) and pid_alive(pid) and time.time() - st.st_mtime < max_age_s:
                continue
            if stat.S_ISDIR(st.st_mode):
                size = sum(f.lstat().st_size for f in p.rglob("*") if f.is_file())
                shutil.rmtree(p)
            else:
                size = st.st_size
                p.unlink()
        except OSError:
            continue
        n, freed = n + 1, freed + size
    return n, freed


def clean_stale_temps(directory: Path, max_age_s: float = 86400.0) -> int:
    """Remove our temporaries (dfedit.files.TEMP_RE) that dead writers left in `directory`; returns
    bytes freed. Nothing of any other name is touched."""
    return remove_stale_temps(directory, max_age_s)[1]


# ---- what a failed write says --------------------------------------------------------------

def human_size(n: int | float | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def free_space(path: str | os.PathLike) -> int | None:
    """Bytes free for us on the filesystem holding `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


def write_error(e: OSError, what: str, path: str | os.PathLike, needed: int | None = None,
                free: int | None = None) -> DfeditError:
    """One sentence for a failed write: what could not be written, where, and why; for a full disk
    also how much space it needs and how much is free (measured now unless given)."""
    where = Path(path)
    if is_disk_full(e):
        free = free if free is not None else free_space(where.parent)
        return DfeditError(f"cannot write {what} {where}: no space left on the device (needs {human_size(needed)}, "
                           f"{human_size(free)} free in {where.parent}); free some space and run it again")
    if e.errno == errno.EFBIG:
        return DfeditError(f"cannot write {what} {where}: the file would be too large for this filesystem or "
                           f"for the file-size limit (needs {human_size(needed)})")
    if e.errno == errno.EROFS:
        return DfeditError(f"cannot write {what} {where}: the filesystem is read-only")
    if e.errno in (errno.EACCES, errno.EPERM):
        return DfeditError(f"cannot write {what} {where}: permission denied")
    return DfeditError(f"cannot write {what} {where}: {e.strerror or e}")


# ---- directories to write into, files to read ----------------------------------------------

def writable_dir(path: Path) -> str | None:
    """Why `path` cannot be used as a directory to write into (None if it can): it, or the nearest
    part of it that exists, must be a directory this process may write."""
    p = Path(path).expanduser()
    q = p
    while not q.exists():
        if q.parent == q:
            break
        q = q.parent
    if not q.is_dir():
        return f"{q} is not a directory"
    if not os.access(q, os.W_OK | os.X_OK):
        return f"{q} is not writable (permission denied)"
    return None


def read_json_file(path: Path, what: str) -> object:
    """JSON from a file we did not necessarily write: any failure is one sentence naming it."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DfeditError(f"{what} {path} is missing") from None
    except IsADirectoryError:
        raise DfeditError(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise DfeditError(f"{what} {path} is not text (damaged or not a JSON file)") from None
    except json.JSONDecodeError as e:
        raise DfeditError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:  # [[[[... 100,000 deep: what a parser on a stack cannot read is not valid here
        raise DfeditError(f"{what} {path} is not valid JSON (nested too deeply)") from None
    except OSError as e:
        raise DfeditError(f"cannot read {what} {path}: {e.strerror or e}") from None
