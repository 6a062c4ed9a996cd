"""The on-disk caches: prompt embeddings, and what every cache of dfedit and dfedit-train shares.

T5-XXL is 11.6 GiB in fp16 and slow to load; the embedding of a prompt is a few hundred KB. So every
command looks prompts up in an `EmbeddingCache` first and loads the text encoder only for the ones
it has never seen (`dfedit embed` fills the cache ahead of time). A cache is keyed by its text
encoder (which files, which dtype, how many tokens) and each entry by the exact prompt text after
preprocessing. T5's entries are one file per prompt, the emoji models' caption cache one shard per
batch of captions (`Layout`); both are read and validated by the same code.

The one cache root (`cache_root`) is shared by dfedit and dfedit-train; `notice` says a cache
problem once; `discard` removes a damaged entry. Cache files are written with dfedit.files'
`atomic_write`, like every file dfedit writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


@dataclass(frozen=True)
class Layout:
    """How an embedding cache's files hold prompts, in one of the two formats on disk.

    per_prompt: one file per prompt, named by a hash of it, the prompt in its metadata ("prompt")
    and its states unbatched (L, D): T5's entries. Else one shard per batch of new prompts, the
    prompt list in its metadata ("prompts", JSON) and a row per prompt in each tensor (N, L, D)
    and mask (N, L): the caption cache, whose 3,781 training captions are one file.
    """

    folder: str  # below the cache root
    per_prompt: bool
    states: str  # the states' tensor name in a file
    mask: str | None  # the mask's (None: the cache keeps none)
    what: str  # how a damaged file is named ("cache entry")
    recomputing: str  # what is recomputed when it is ("it")
    written: str  # how a file that cannot be written is named


ENTRIES = Layout("embeddings", True, "text", None, "cache entry", "it", "the embedding cache entry")
SHARDS = Layout("text", False, "states", "mask", "caption cache shard", "its prompts", "the caption cache shard")


class EmbeddingCache:
    """<cache root>/<layout folder>/<name>/*.safetensors: prompt embeddings, validated when read.

    A prompt's row is its states (L, D) and, in a layout that keeps one, its attention mask (L,).
    Every file carries a checksum of its tensors, and is validated before any of its rows is used
    (its prompts, shapes, dtype, finite values, checksum): a damaged one is reported in one line,
    deleted and its prompts recomputed, so it never breaks other prompts. A cache directory that
    cannot be written degrades to no cache with one notice. Writes are atomic, so a killed run
    never leaves half a file behind.

    tokens / width / dtype: what every row's states must be (None: not checked; width may also be
    given per lookup, else a lookup over several files takes the width most of them have).
    """

    def __init__(self, name: str, cache_dir: str | os.PathLike | None = None, *, layout: Layout = ENTRIES,
                 tokens: int | None = None, width: int | None = None, dtype: torch.dtype | None = None):
        self.dir = cache_root(cache_dir) / layout.folder / name
        self.layout, self.tokens, self.width, self.dtype = layout, tokens, width, dtype
        self.writable = True

    def _path(self, prompt: str) -> Path:
        """The file of one prompt (per_prompt layouts)."""
        return self.dir / (hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:40] + ".safetensors")

    def _damaged(self, path: Path, why: str, inode: int | None) -> None:
        notice(f"{self.layout.what} {path} is damaged ({why}); recomputing {self.layout.recomputing}")
        discard(path, inode)

    def _files(self, want: set[str], order: list[str]):
        """(path, inode, the prompts it lists) of each file that may hold a wanted prompt."""
        if self.layout.per_prompt:
            for prompt in order:
                path = self._path(prompt)
                try:
                    yield path, path.lstat().st_ino, [prompt]  # its metadata is checked against it when read
                except OSError:
                    continue
            return
        if not self.dir.is_dir():
            return
        for f in sorted(self.dir.glob("*.safetensors")):
            inode = None
            try:
                inode = f.lstat().st_ino
                with safe_open(str(f), framework="pt") as h:
                    meta = h.metadata() or {}
                listed = json.loads(meta["prompts"])
                if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
                    raise ValueError("its prompt list is not a list of strings")
            except Exception as e:  # truncated, a directory, not safetensors, no prompt list...
                if out_of_memory(e):  # not damage: the file is kept
                    raise MemoryError(str(e)) from None
                self._damaged(f, _unreadable(e), inode)
                continue
            if want & set(listed):
                yield f, inode, listed

    def _common_width(self, files) -> int | None:
        widths = []
        for f, *_ in files:
            try:
                with safe_open(str(f), framework="pt") as h:
                    widths.append(h.get_slice(self.layout.states).get_shape()[-1])
            except Exception:
                pass
        return max(set(widths), key=widths.count) if widths else None

    def problem(self, listed: list[str], tensors: dict[str, torch.Tensor], meta: dict[str, str],
                width: int | None) -> str | None:
        """Why a file listing `listed` cannot be used, or None when it is good."""
        layout = self.layout
        if layout.per_prompt and meta.get("prompt") != listed[0]:
            return "it belongs to another prompt" if "prompt" in meta else "its metadata has no prompt"
        rows, rank = ("", 2) if layout.per_prompt else ("N, ", 3)
        s = tensors.get(layout.states)
        if s is None:
            return f"it has no {layout.states!r} tensor"
        if s.ndim != rank or not s.is_floating_point():
            return f"its states are {s.dtype} of shape {tuple(s.shape)}, not ({rows}L, D) floats"
        m = tensors.get(layout.mask) if layout.mask else None
        if layout.mask:
            if m is None:
                return f"it has no {layout.mask!r} tensor"
            if m.ndim != s.ndim - 1 or m.dtype not in (torch.uint8, torch.bool):
                return f"its mask is {m.dtype} of shape {tuple(m.shape)}, not ({rows}L) uint8"
        if not layout.per_prompt and (s.shape[0] != len(listed) or (m is not None and m.shape[0] != len(listed))):
            held = f"{s.shape[0]} states" + (f" and {m.shape[0]} masks" if m is not None else "")
            return f"it lists {len(listed)} prompts but holds {held}"
        tokens, got = s.shape[-2], s.shape[-1]
        if (self.tokens is not None and tokens != self.tokens) or (m is not None and m.shape[-1] != tokens):
            return f"its states have {tokens} tokens, the cache is for {self.tokens or m.shape[-1]}"
        if width is not None and got != width:
            expected = (self.tokens, width) if self.tokens is not None else width
            return f"its states are {got} wide, the text encoder gives {expected}"
        if self.dtype is not None and s.dtype != self.dtype:
            return f"its states are {s.dtype}, expected {self.dtype}"
        if not all_finite(s):
            return "it holds NaN or infinite values"
        if "sha256" in meta and meta["sha256"] != tensor_digest(tensors):
            return "its checksum does not match its data"
        return None

    def get(self, prompts: list[str], width: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """{prompt: {"states": (L, D), "mask": (L,) bool where kept}} of the prompts found in valid
        files. `width`: the text encoder's when known (else this cache's, else the common one)."""
        order = list(dict.fromkeys(prompts))
        want, out = set(order), {}
        files = list(self._files(want, order))
        width = width if width is not None else self.width
        if width is None and len(files) > 1:
            width = self._common_width(files)
        for path, inode, listed in files:
            rows = [(i, p) for i, p in enumerate(listed) if p in want and p not in out]
            if not rows:
                continue
            try:
                tensors, meta = read_safetensors(path)
                why = self.problem(listed, tensors, meta, width)
            except Exception as e:  # truncated, a directory, not safetensors at all...
                if out_of_memory(e):
                    raise MemoryError(str(e)) from None
                why = _unreadable(e)
            if why is not None:
                self._damaged(path, why, inode)
                continue
            states = tensors[self.layout.states]
            mask = tensors[self.layout.mask] if self.layout.mask else None
            for i, p in rows:
                out[p] = {"states": states if self.layout.per_prompt else states[i]}
                if mask is not None:
                    out[p]["mask"] = mask[i].bool()
            if len(out) == len(want):
                break
        return out

    def put(self, prompts: list[str], states: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Store a row per prompt: `states` (N, L, D) and, where the layout keeps one, `mask` (N, L)."""
        layout = self.layout
        if layout.per_prompt:
            files = [(self._path(p), {layout.states: states[i]}, {"prompt": p}) for i, p in enumerate(prompts)]
        else:
            name = hashlib.sha1("\n".join(prompts).encode()).hexdigest()[:16]
            files = [(self.dir / f"{name}.safetensors", {layout.states: states, layout.mask: mask.to(torch.uint8)},
                      {"prompts": json.dumps(prompts)})]
        for path, tensors, meta in files:
            if not self.writable:
                return
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            data = st_save(tensors, metadata={**meta, "sha256": tensor_digest(tensors)})
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                clean_stale_temps(self.dir)
                if path.is_dir() and not path.is_symlink():  # a directory where the file belongs
                    discard(path)
                atomic_write(path, data)  # atomic: readers never see half a file
            except OSError as e:
                self.writable = False
                notice(f"{write_error(e, layout.written, path, len(data))}; continuing without the cache")


def _unreadable(e: BaseException) -> str:
    return f"unreadable: {(str(e).splitlines() or [type(e).__name__])[0]}"


# Token counters (prompt -> tokens) by tokenizer, each loaded once per process: prompts are checked
# against their text encoder's limit before any weights load, and that must not load a tokenizer
# per check.
TOKEN_COUNTERS: dict[str, Callable[[str], int]] = {}


def token_counter(key: str, load: Callable[[], Callable[[str], int]]) -> Callable[[str], int]:
    """The counter of tokenizer `key`, from `load()` the first time it is asked for."""
    if key not in TOKEN_COUNTERS:
        TOKEN_COUNTERS[key] = load()
    return TOKEN_COUNTERS[key]


def fingerprint(parts: list[bytes | str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8") if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:24]
