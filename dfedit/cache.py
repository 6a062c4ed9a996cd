"""The on-disk caches: prompt embeddings, and what every cache of dfedit and dfedit-train shares.

T5-XXL is 11.6 GiB in fp16 and slow to load; the embedding of a prompt is a few hundred KB. So every
command looks prompts up here first and loads the text encoder only for the ones it has never seen
(`dfedit embed` fills the cache ahead of time). Entries are keyed by a fingerprint of the text
encoder (which files, which dtype) and the exact prompt text after preprocessing, stored as
safetensors, and written atomically so a killed run never leaves a half-written entry behind.

Every entry carries a checksum of its tensors and is validated when read (its prompt, shape,
dtype, finite values, checksum): a damaged entry is reported in one line, deleted and recomputed,
never used. A cache that cannot be written (read-only, disk full) degrades to no cache with one
notice; the command still runs.

The one cache root (`cache_root`) is shared by dfedit and dfedit-train; `notice` says a cache
problem once; `discard` removes a damaged entry. Cache files are written with dfedit.files'
`atomic_write`, like every file dfedit writes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from .files import atomic_write, clean_stale_temps, write_error


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The one cache root of dfedit and dfedit-train (prompt embeddings, caption embeddings, data
    sets, downloads, eval and recognise caches): `cache_dir` if given (--cache-dir), else
    $DFEDIT_CACHE, else $XDG_CACHE_HOME/dfedit, else ~/.cache/dfedit."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("DFEDIT_CACHE"):
        return Path(os.environ["DFEDIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dfedit"


# ---- notices and litter ------------------------------------------------------------------------

_noticed: set[str] = set()


def notice(msg: str) -> None:
    """One `warning:` line on stderr, once per process for the same message."""
    if msg not in _noticed:
        _noticed.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def discard(path: Path, inode: int | None = None) -> None:
    """Remove a damaged cache entry (file or a directory in its place), but not a good one another
    process has put there since we read it (`inode`: what we read)."""
    try:
        st = path.lstat()
        if inode is not None and st.st_ino != inode:
            return
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        pass


# ---- tensors -----------------------------------------------------------------------------------

def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes: the checksum cache entries carry."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:32]


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in `t` (cheap: a float64 sum is finite exactly when every element is)."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return True
    return bool(torch.isfinite(t.sum(dtype=torch.float64)))


def out_of_memory(e: BaseException) -> bool:
    """Whether a failed read ran out of memory (mmap's ENOMEM, as under `ulimit -v`): the file is
    not damaged then, and must not be deleted as if it were."""
    return isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM) or \
        "os error 12" in str(e) or "cannot allocate memory" in str(e).lower()


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as h:
        return {k: h.get_tensor(k) for k in h.keys()}, dict(h.metadata() or {})


class EmbeddingCache:
    """embeddings/<encoder fingerprint>/<sha256(prompt)>.safetensors, one validated entry per prompt.

    shape / dtype: what every entry's "text" tensor must be (None: not checked).
    """

    def __init__(self, fingerprint: str, cache_dir: str | os.PathLike | None = None,
                 shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None):
        self.dir = cache_root(cache_dir) / "embeddings" / fingerprint
        self.shape, self.dtype = shape, dtype
        self.writable = True

    def _path(self, prompt: str) -> Path:
        return self.dir / (hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:40] + ".safetensors")

    def problem(self, prompt: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str | None:
        """Why an entry cannot be used for `prompt`, or None when it is good."""
        if meta.get("prompt") != prompt:
            return "it belongs to another prompt" if "prompt" in meta else "its metadata has no prompt"
        t = tensors.get("text")
        if t is None:
            return "it has no 'text' tensor"
        if not t.is_floating_point() or t.ndim != 2:
            return f"'text' is {t.dtype} of shape {tuple(t.shape)}, not a 2-D float tensor"
        if self.shape is not None and tuple(t.shape) != tuple(self.shape):
            return f"'text' has shape {tuple(t.shape)}, the text encoder gives {tuple(self.shape)}"
        if self.dtype is not None and t.dtype != self.dtype:
            return f"'text' is {t.dtype}, expected {self.dtype}"
        if not all_finite(t):
            return "it holds NaN or infinite values"
        if "sha256" in meta and meta["sha256"] != tensor_digest(tensors):
            return "its checksum does not match its data"
        return None

    def get(self, prompt: str) -> dict[str, torch.Tensor] | None:
        path = self._path(prompt)
        try:
            st = path.lstat()
        except OSError:
            return None
        try:
            tensors, meta = read_safetensors(path)
            why = self.problem(prompt, tensors, meta)
        except Exception as e:  # truncated, a directory, not safetensors at all...
            if out_of_memory(e):
                raise MemoryError(str(e)) from None
            tensors, why = None, f"unreadable: {(str(e).splitlines() or [type(e).__name__])[0]}"
        if why is not None:
            notice(f"cache entry {path} is damaged ({why}); recomputing it")
            discard(path, st.st_ino)
            return None
        return tensors

    def put(self, prompt: str, tensors: dict[str, torch.Tensor]) -> None:
        if not self.writable:
            return
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        data = st_save(tensors, metadata={"prompt": prompt, "sha256": tensor_digest(tensors)})
        path = self._path(prompt)
        try:
            if self.dir.is_dir():
                clean_stale_temps(self.dir)
            if path.is_dir() and not path.is_symlink():  # a directory where the entry belongs
                shutil.rmtree(path)
            atomic_write(path, data)
        except OSError as e:
            self.writable = False
            notice(f"{write_error(e, 'the embedding cache entry', path, len(data))}; continuing without the cache")


def fingerprint(parts: list[bytes | str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8") if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:24]
