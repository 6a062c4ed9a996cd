"""IF's text encoder: T5-XXL behind the on-disk embedding cache, and its tokenizer's counts.

T5-XXL is loaded only for prompts the cache lacks and freed before any UNet runs; every IF stage
uses the same T5 (stage II shares stage I's encoder and its cache entries).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..cache import EmbeddingCache, fingerprint, token_counter
from ..denoiser import Cond
from ..devices import free_memory
from ..errors import DfeditError
from . import model_error
from .hub import Snapshot, has_component, quiet_hf_logging

# diffusers' IF encode_prompt pads/truncates every prompt to 77 T5 tokens; parity depends on it.
IF_MAX_TOKENS = 77


def _t5_width(root: Path) -> int | None:
    """d_model of the T5 config (what every cache entry's width must be), None if unreadable."""
    try:
        w = json.loads((root / "text_encoder" / "config.json").read_text()).get("d_model")
    except (OSError, ValueError, AttributeError):
        return None
    return w if isinstance(w, int) and not isinstance(w, bool) and w > 0 else None


class T5PromptEncoder:
    """Prompt -> (77, D) T5 states, through the on-disk cache; T5 is loaded only on a miss.

    Prompts are preprocessed as diffusers does with clean_caption=False (lower-case, strip). We
    chose not to run diffusers' caption cleaning (it needs bs4 + ftfy and rewrites URLs, emoji,
    punctuation): what you type is what T5 sees.
    """

    def __init__(self, snapshot: Snapshot, device: torch.device, dtype: torch.dtype, cache_dir=None,
                 offload: bool = False, quiet: bool = True):
        """`snapshot`: the model that provides T5 (its text_encoder and tokenizer)."""
        self.model, self.snapshot = snapshot.model, snapshot
        self.device, self.dtype, self.offload, self.quiet = device, dtype, offload, quiet
        self.cache_dir = cache_dir
        self._root: Path | None = None
        self._cache: EmbeddingCache | None = None

    def _resolve(self) -> Path:
        if self._root is None:
            self._root = self.snapshot.root(["text_encoder", "tokenizer"], fp16=self.dtype == torch.float16)
            if not has_component(self._root, "text_encoder"):
                raise model_error("model", f"{self.model} has no text_encoder: pass {{model}} with the stage I checkpoint "
                                  "that provides T5 for it")
        return self._root

    @property
    def cache(self) -> EmbeddingCache:
        if self._cache is None:
            root = self._resolve()
            parts: list[bytes | str] = [str(self.dtype)]
            if Path(self.model).expanduser().is_dir():
                parts.append(str(root.resolve()))
            else:
                parts.append(self.model)
            for sub in ("text_encoder", "tokenizer"):
                for f in sorted((root / sub).glob("*")):
                    if f.suffix in (".json", ".model", ".txt"):
                        parts += [f.name, f.read_bytes()]
                    elif f.is_file():
                        st = f.stat()
                        parts += [f.name, f"{st.st_size}:{st.st_mtime_ns}"]
            width = _t5_width(root)
            self._cache = EmbeddingCache("t5-" + fingerprint(parts), self.cache_dir, tokens=IF_MAX_TOKENS if width else None,
                                         width=width, dtype=self.dtype)
        return self._cache

    @staticmethod
    def preprocess(prompt: str) -> str:
        return prompt.lower().strip()

    def encode(self, prompts: list[str]) -> Cond:
        texts = [self.preprocess(p) for p in prompts]
        found = self.cache.get(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            states = torch.stack(self._run_t5(missing))
            self.cache.put(missing, states)
            found.update({t: {"states": states[i]} for i, t in enumerate(missing)})
        return Cond(text=torch.stack([found[t]["states"] for t in texts]))

    def _run_t5(self, texts: list[str]) -> list[torch.Tensor]:
        from transformers import AutoTokenizer, T5EncoderModel

        from ..progress import progress_bar

        root = self._resolve()
        quiet_hf_logging()
        try:
            tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
            variant = "fp16" if self.dtype == torch.float16 and list((root / "text_encoder").glob("*fp16*")) else None
            t5 = T5EncoderModel.from_pretrained(root / "text_encoder", dtype=self.dtype, variant=variant,
                                                use_safetensors=True)
        except DfeditError:
            raise
        except (OSError, ValueError) as e:
            raise DfeditError(f"could not load the T5 text encoder from {root}: {str(e).splitlines()[0]}") from None
        t5.eval()
        if self.offload and self.device.type != "cpu":
            from accelerate import cpu_offload
            cpu_offload(t5, execution_device=self.device)
        else:
            t5.to(self.device)
        out = []
        # One prompt per forward: an entry must not depend on which prompts it was batched with.
        with torch.inference_mode(), progress_bar(len(texts), "T5 prompts", not self.quiet) as bar:
            for t in texts:
                tok = tokenizer(t, padding="max_length", max_length=IF_MAX_TOKENS, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
                states = t5(tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device))[0]
                out.append(states[0].to("cpu"))
                bar.advance()
        del t5
        free_memory()  # T5-XXL must be gone before a UNet is moved to the GPU
        return out


def count_t5_tokens(root: Path, prompts: list[str]) -> list[int]:
    """T5 tokens of each prompt as IF encodes it (preprocessed, with </s>), from the tokenizer of
    the model at `root` alone: what a prompt is checked against before any weights load."""
    if not has_component(root, "tokenizer"):
        return [0] * len(prompts)  # no tokenizer here: the encoder's own check says what is missing
    path = str((root / "tokenizer").resolve())

    def load():
        from transformers import AutoTokenizer
        quiet_hf_logging()
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise DfeditError(f"could not load the T5 tokenizer from {path}: {str(e).splitlines()[0]}") from None
        return lambda p: len(tok(p, add_special_tokens=True).input_ids)

    count = token_counter("t5:" + path, load)
    return [count(T5PromptEncoder.preprocess(p)) for p in prompts]
