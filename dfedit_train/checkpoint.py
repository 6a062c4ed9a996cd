"""Checkpoints: safetensors + one JSON config, written atomically, rotated; and the dfedit loader.

A run directory (`--out`) looks like
    OUT/latest.json                       {"checkpoint": "checkpoints/step-00001234"}
    OUT/checkpoints/step-00001234/        config.json, model.safetensors, ema.safetensors,
                                          optimizer.safetensors
    OUT/samples/epoch-0010.png            validation grids
Each step directory is complete on its own and is renamed into place only after every file in it
is written and flushed, so a killed run leaves the previous checkpoint intact; `latest.json` is
replaced atomically afterwards. No pickle anywhere: tensors in safetensors, the rest in JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dfedit.errors import DfeditError

FORMAT = "dfedit-train/emoji-unet"
FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not supported everywhere (some network filesystems): best effort
        pass


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ---- optimizer state <-> flat tensors + JSON --------------------------------------------------

def optimizer_to_flat(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in state_dict["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    groups = meta["param_groups"]
    for g in groups:  # JSON turned tuples (betas) into lists; torch expects the originals
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# ---- writing -----------------------------------------------------------------------------------

def save(out: Path, step: int, config: dict, model: dict, ema: dict, optimizer: dict, keep: int) -> Path:
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step-{step:08d}"
    tmp = ckpts / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    _save_tensors(model, tmp / "model.safetensors")
    _save_tensors(ema, tmp / "ema.safetensors")
    _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
    _write_json(tmp / "config.json", {**config, "format": FORMAT, "format_version": FORMAT_VERSION,
                                      "optimizer": opt_meta})
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpts)
    _write_json(out / "latest.json", {"checkpoint": f"checkpoints/{final.name}", "step": step})
    for old in sorted(p for p in ckpts.glob("step-*") if p.is_dir())[:-keep or None]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


# ---- reading -----------------------------------------------------------------------------------

def resolve(path: str | Path) -> Path | None:
    """The checkpoint directory a path names: itself, or a run directory's latest checkpoint."""
    p = Path(path).expanduser()
    cfg = p / "config.json"
    if cfg.is_file():
        try:
            if json.loads(cfg.read_text()).get("format") == FORMAT:
                return p
        except (OSError, json.JSONDecodeError):
            return None
        return None
    latest = p / "latest.json"
    if latest.is_file():
        try:
            q = p / json.loads(latest.read_text())["checkpoint"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return None
        return q if (q / "config.json").is_file() else None
    return None


def is_checkpoint_dir(path: str | Path) -> bool:
    """True for a dfedit-train checkpoint directory or a run directory (`--out`) that has one."""
    return resolve(path) is not None


def load(path: str | Path) -> tuple[Path, dict]:
    ck = resolve(path)
    if ck is None:
        raise DfeditError(f"{path} is not a dfedit-train checkpoint (no config.json or latest.json)")
    cfg = json.loads((ck / "config.json").read_text())
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise DfeditError(f"{ck} was written by a newer dfedit-train; upgrade to load it")
    return ck, cfg


def load_tensors(ck: Path, which: str) -> dict[str, torch.Tensor]:
    f = ck / f"{which}.safetensors"
    if not f.is_file():
        raise DfeditError(f"{f} is missing: the checkpoint is incomplete")
    try:
        return load_file(str(f))
    except Exception as e:
        raise DfeditError(f"could not read {f}: {str(e).splitlines()[0]}") from None


def build_net(cfg: dict):
    from .config import ModelConfig, from_dict
    from .unet import UNet

    return UNet(from_dict(ModelConfig, cfg["model"]))


def load_denoiser(path: str | Path, device="cpu", dtype=torch.float32, weights: str = "ema"):
    """A checkpoint as a dfedit `Denoiser` (EMA weights unless weights="model")."""
    from .sample import EmojiDenoiser

    ck, cfg = load(path)
    net = build_net(cfg)
    try:
        net.load_state_dict(load_tensors(ck, weights))
    except RuntimeError as e:
        raise DfeditError(f"{ck} does not match its own config: {str(e).splitlines()[0]}") from None
    return EmojiDenoiser.from_config(net, cfg, name=str(ck), device=device, dtype=dtype)
