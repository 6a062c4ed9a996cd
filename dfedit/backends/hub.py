"""Hugging Face Hub ids and local diffusers-layout directories, resolved to local directories.

A Hub id is resolved to a local snapshot holding only the files a run needs (fp16 weights only when
running in fp16), which also turns the Hub's failure modes (gated, unknown, offline) into one
sentence each. Each model string becomes one `Snapshot`, so that its configs and its weights are
each looked up once per command. Nothing here knows a model family: what components a model has
is the caller's to say, and a string that names no model is described by the registry, in every
backend's words (`dfedit.backends.unknown_model`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import DfeditError
from . import model_error, unknown_model

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def quiet_hf_logging() -> None:
    """transformers/diffusers print weight-loading bars and warnings of their own; we show ours."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    for lib in (df_logging, hf_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _weight_patterns(sub: str, fp16: bool) -> list[str]:
    # Safetensors only (never pickled .bin). With fp16 we fetch only the fp16 variant: IF-I-XL's
    # fp32 UNet alone is 17 GB. Sharded checkpoints come with an index file.
    if fp16:
        return [f"{sub}/*.fp16.safetensors", f"{sub}/*.fp16-*.safetensors", f"{sub}/*.safetensors.index.fp16.json"]
    return [f"{sub}/*.safetensors", f"{sub}/*.safetensors.index.json"]  # fp16 files excluded by the caller


def resolve_snapshot(model: str, components: list[str], fp16: bool = False, weights: bool = True,
                     param: str = "model", hint: str = "", also: tuple[str, ...] = ()) -> Path:
    """A local directory holding `components` (subfolder names) of `model` (Hub id or directory).
    param names the argument in messages; hint ends every Hub failure's message; `also`: components
    fetched in the same Hub look-up that the directory need not have."""
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").is_file() and not any((p / c / "config.json").is_file() for c in components):
            raise unknown_model(model, param, "is not a diffusers model directory (no model_index.json)")
        return p
    if p.is_file():
        raise unknown_model(model, param, "is a file")
    if p.exists() or not _HUB_ID.match(model):
        raise unknown_model(model, param)
    return _hub_snapshot(model, list(components) + [c for c in also if c not in components], fp16, weights, hint,
                         param)


class Snapshot:
    """One model argument's local directories, each looked up once: what a command resolves its
    --model / --stage2 into, so that a Hub id costs one snapshot look-up for its configs and one
    for its weights, however many layers ask. A look-up that fetched a superset of what is asked
    (more components, weights) answers for it."""

    def __init__(self, model: str, param: str = "model", hint: str = ""):
        self.model, self.param, self.hint = model, param, hint
        self._roots: dict[tuple, Path] = {}

    def root(self, components: list[str], fp16: bool = False, weights: bool = True,
             also: tuple[str, ...] = ()) -> Path:
        want = set(components)
        for (comps, fp, w), path in self._roots.items():
            if want <= set(comps) and fp == fp16 and (w or not weights):
                return path
        path = resolve_snapshot(self.model, list(components), fp16=fp16, weights=weights, param=self.param,
                                hint=self.hint, also=also)
        self._roots[(tuple(components) + tuple(c for c in also if c not in components), fp16, weights)] = path
        return path


def _hub_snapshot(repo: str, components: list[str], fp16: bool, weights: bool, hint: str = "",
                  param: str = "model") -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hfe

    patterns = ["model_index.json"]
    for c in components:
        patterns += [f"{c}/*.json", f"{c}/*.model", f"{c}/*.txt"]
        if weights and c in ("unet", "text_encoder"):
            patterns += _weight_patterns(c, fp16)
    # Full precision: never the fp16 variant's files (they match the broad patterns above).
    ignore = [] if fp16 else ["*.fp16.*", "*.fp16-*"]
    try:
        path = Path(snapshot_download(repo, allow_patterns=patterns, ignore_patterns=ignore,
                                      local_files_only=_offline()))
    except hfe.GatedRepoError:
        raise model_error(
            param, f"{repo} is gated: accept its licence at https://huggingface.co/{repo} while logged in, "
            f"then run `hf auth login` (or set HF_TOKEN) on this machine{hint}") from None
    except hfe.RepositoryNotFoundError:
        raise model_error(param, f"{repo} is not a model on the Hub (or it is private and you are not logged in): "
                          f"check the id or pass a local directory{hint}") from None
    except (hfe.LocalEntryNotFoundError, hfe.OfflineModeIsEnabled):
        raise model_error(param, f"{repo} is not in the local Hub cache and the Hub cannot be reached "
                          "(HF_HUB_OFFLINE is set or there is no network): download it once online, "
                          f"or pass a local directory{hint}") from None
    except (OSError, ValueError) as e:  # connection errors and other HTTP failures
        raise model_error(param, f"{repo} could not be fetched from the Hub ({type(e).__name__}): check your network "
                          f"or pass a local directory{hint}") from None
    if weights and fp16 and "unet" in components and not list(path.glob("unet/*fp16*.safetensors")):
        return _hub_snapshot(repo, components, False, weights, hint, param)  # repo without an fp16 variant
    return path


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DfeditError(f"{what} is missing ({path}): is this a diffusers model directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DfeditError(f"{what} ({path}) is not valid JSON") from None


def has_component(root: Path, name: str) -> bool:
    index = root / "model_index.json"
    if index.is_file():
        entry = read_json(index, "model_index.json").get(name)
        if not entry or entry[0] is None:
            return False
    return (root / name / "config.json").is_file() or (root / name / "tokenizer_config.json").is_file()
