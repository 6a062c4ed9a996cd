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

import dfedit
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

# `--model emoji`: the model that ships inside the dfedit package (see `export`).
BUILTIN = {"emoji": Path(dfedit.__file__).resolve().parent / "weights" / "emoji"}


def resolve(path: str | Path) -> Path | None:
    """The checkpoint directory a path names: itself, a run directory's latest checkpoint, or a
    built-in model's name ("emoji"; write ./emoji for a local directory of that name)."""
    if str(path) in BUILTIN:
        path = BUILTIN[str(path)]
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


def describe(path: str | Path):
    """(NoiseSchedule, image size) from the config alone: what dfedit checks before loading weights."""
    from dfedit.schedule import NoiseSchedule

    from .config import DiffusionConfig, from_dict

    _, cfg = load(path)
    return NoiseSchedule.from_config(from_dict(DiffusionConfig, cfg["diffusion"]).scheduler_config()), \
        int(cfg["model"]["image_size"])


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


# ---- export: a run's EMA weights as a small, inference-only model directory ---------------------

def export(run: str | Path, dest: str | Path, fp16: bool = True, extra_record: dict | None = None) -> Path:
    """Write DEST/config.json, DEST/ema.safetensors (fp16 by default) and DEST/record.json.

    The config keeps everything `load_denoiser` needs (model, schedule, text encoder, data stats)
    and drops the optimizer state; record.json is the training record: recipe, epochs, steps,
    wall time and images/s from the run's log.jsonl, and the eval numbers when `dfedit-train eval`
    has been run on that checkpoint.
    """
    ck, cfg = load(run)
    ema = load_tensors(ck, "ema")
    if fp16:
        ema = {k: v.half() if v.is_floating_point() else v for k, v in ema.items()}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    log = []
    run_dir = ck.parent.parent
    if (run_dir / "log.jsonl").is_file():
        log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    record = {
        "source_checkpoint": ck.name, "weights": "ema", "dtype": "float16" if fp16 else "float32",
        "recipe": {k: cfg[k] for k in ("model", "diffusion", "train") if k in cfg},
        "data": {k: cfg["data"].get(k) for k in ("source_desc", "vendor", "n_train", "n_val", "image_size")},
        "text_encoder": cfg.get("text_encoder"), "state": {k: v for k, v in cfg["state"].items() if k != "scaler"},
        "epochs_logged": len(log), "train_wall_s": round(sum(e.get("epoch_s", 0) for e in log), 1),
        "images_per_s_median": (sorted(e["images_per_s"] for e in log)[len(log) // 2] if log else None),
        "final_epoch_loss": log[-1]["loss"] if log else None, "versions": cfg.get("versions"),
        **(extra_record or {}),
    }
    if (ck / "eval" / "eval.json").is_file():
        record["eval"] = json.loads((ck / "eval" / "eval.json").read_text())
    out_cfg = {k: v for k, v in cfg.items() if k != "optimizer"}
    _save_tensors(ema, dest / "ema.safetensors")
    _write_json(dest / "config.json", out_cfg)
    _write_json(dest / "record.json", record)
    return dest
