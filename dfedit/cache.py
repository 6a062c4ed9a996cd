"""On-disk prompt-embedding cache.

T5-XXL is 11.6 GiB in fp16 and slow to load; the embedding of a prompt is a few hundred KB. So every
command looks prompts up here first and loads the text encoder only for the ones it has never seen
(`dfedit embed` fills the cache ahead of time). Entries are keyed by a fingerprint of the text
encoder (which files, which dtype) and the exact prompt text after preprocessing, stored as
safetensors, and written atomically so a killed run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("DFEDIT_CACHE"):
        return Path(os.environ["DFEDIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dfedit"


def atomic_write(path: Path, write, exclusive: bool = False) -> None:
    """Call write(tmp_path) then rename over `path`, so readers see the old file or the new one.

    exclusive: never replace an existing `path` (FileExistsError instead), decided atomically at
    publish time, so two processes that picked the same name cannot overwrite each other.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic: fails if path exists
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: reserve the name, then fill it
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class EmbeddingCache:
    """embeddings/<encoder fingerprint>/<sha256(prompt)>.safetensors"""

    def __init__(self, fingerprint: str, cache_dir: str | os.PathLike | None = None):
        self.dir = cache_root(cache_dir) / "embeddings" / fingerprint

    def _path(self, prompt: str) -> Path:
        return self.dir / (hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:40] + ".safetensors")

    def get(self, prompt: str) -> dict[str, torch.Tensor] | None:
        path = self._path(prompt)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception:  # a corrupt entry is a miss; it gets recomputed and overwritten
            return None

    def put(self, prompt: str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        atomic_write(self._path(prompt), lambda tmp: save_file(tensors, str(tmp), metadata={"prompt": prompt}))


def fingerprint(parts: list[bytes | str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8") if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:24]
