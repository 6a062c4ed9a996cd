"""`dfedit-train export`: a run's EMA weights as a small, inference-only model directory
(dfedit --model DEST): config.json, ema.safetensors, record.json, manifest.json and, for a local
text encoder, text_encoder/. The directory is written beside DEST and swapped in whole.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from dfedit.files import free_space, write_error
from dfedit.emoji.checkpoint import MANIFEST, load, load_tensors, manifest_bytes
from dfedit.errors import DfeditError
from dfedit.files import fsync_dir, make_temp_dir, remove_stale_temps, swap_dir, write_file

from .checkpoint import json_bytes, tensor_bytes
from .rundir import read_log

EXPORT_FILES = ("config.json", "ema.safetensors", "record.json", MANIFEST, "text_encoder")
# What of a local text encoder an export copies into DEST/text_encoder: weights only as safetensors.
ENCODER_FILES = re.compile(r"^[\w.-]+\.(safetensors|json|txt|model)$")


def _text_encoder_files(cfg: dict) -> dict[str, bytes]:
    """A local text encoder directory's files for DEST/text_encoder/ (cfg is pointed there); the
    packaged MiniLM stays a name, and a Hub id cannot travel: one sentence."""
    te = cfg["text_encoder"]
    if te["name"] == "minilm":
        return {}
    src = Path(te["name"]).expanduser()
    if not src.is_dir():
        raise DfeditError(f"the run's text encoder {te['name']!r} is not a local directory: an export carries "
                          "its text encoder inside it (the packaged MiniLM excepted)")
    files = {f"text_encoder/{f.name}": f.read_bytes() for f in sorted(src.iterdir())
             if f.is_file() and not f.is_symlink() and ENCODER_FILES.match(f.name)}
    if not any(n.endswith(".safetensors") for n in files):
        raise DfeditError(f"the run's text encoder {src} has no safetensors weights; export needs them")
    te_out = {**te, "name": "text_encoder"}
    cfg["text_encoder"] = te_out
    if cfg.get("data", {}).get("text_encoder") not in (None, "minilm"):
        cfg["data"] = {**cfg["data"], "text_encoder": "text_encoder"}
    return files


def check_export_dest(dest: Path) -> None:
    """Before reading any weights: DEST must be a new or empty directory or a previous export, on a
    writable filesystem."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DfeditError(f"{dest} is a file; export into a directory")
    if dest.is_dir():
        other = sorted(p.name for p in dest.iterdir() if p.name not in EXPORT_FILES)
        if other:
            raise DfeditError(f"{dest} holds other files ({', '.join(other[:3])}); export into a new or empty "
                              "directory, or over a previous export")
    parent = dest.parent  # a new export is swapped in beside the old one: DEST's directory is written
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DfeditError(f"cannot write {dest}: {parent} is not a writable directory")


def _per_epoch(entries: list[dict]) -> list[dict]:
    """One log entry per epoch, in epoch order: a stopped and resumed epoch logs twice, its last line counts."""
    by_epoch: dict = {}
    for e in entries:
        try:
            by_epoch[e["epoch"]] = e
        except (KeyError, TypeError):
            continue
    return [e for _, e in sorted(by_epoch.items(), key=lambda kv: str(kv[0]).zfill(12))]


def export(run: str | Path, dest: str | Path, fp16: bool = True, extra_record: dict | None = None,
           guidance: float | None = None) -> Path:
    """Write DEST/config.json, DEST/ema.safetensors (fp16 by default), DEST/record.json and
    DEST/manifest.json (their sha256), and DEST/text_encoder/ when the run's encoder is a local one.

    The config keeps everything `load_denoiser` needs (model, schedule, text encoder, data stats)
    and drops the optimizer state; record.json is the training record: recipe, epochs, steps,
    wall time and images/s from the run's log.jsonl, and the eval numbers when `dfedit-train eval`
    has been run on that checkpoint. `guidance` sets the model's default guidance scale (dfedit's
    --cfg when none is given; otherwise the run's validation-grid scale). Everything is written to
    a new temporary directory beside DEST and swapped in with one rename (files.swap_dir), so a
    full disk or a kill leaves a previous export intact and DEST is never a mix of two exports.
    """
    dest = Path(dest)
    check_export_dest(dest)
    ck, cfg = load(run)
    ema = load_tensors(ck, "ema")
    if fp16:
        ema = {k: v.half() if v.is_floating_point() else v for k, v in ema.items()}
    log = _per_epoch(read_log(ck.parent.parent))
    record = {
        "source_checkpoint": ck.name, "weights": "ema", "dtype": "float16" if fp16 else "float32",
        "recipe": {k: cfg[k] for k in ("model", "diffusion", "train") if k in cfg},
        "data": {k: cfg["data"].get(k) for k in ("source_desc", "vendor", "n_train", "n_val", "image_size", "sets",
                                                 "base_only", "val_fraction", "pair_holdout", "caption_variants",
                                                 "tone_share") if k in cfg["data"]},
        "text_encoder": cfg.get("text_encoder"),
        "state": {k: v for k, v in cfg.get("state", {}).items() if k != "scaler"},
        "epochs_logged": len(log), "train_wall_s": round(sum(e.get("epoch_s", 0) for e in log), 1),
        "images_per_s_median": (sorted(e["images_per_s"] for e in log)[len(log) // 2] if log else None),
        "final_epoch_loss": log[-1]["loss"] if log else None, "versions": cfg.get("versions"),
        **(extra_record or {}),
    }
    if (ck / "eval" / "eval.json").is_file():
        try:
            record["eval"] = json.loads((ck / "eval" / "eval.json").read_text())
        except (OSError, ValueError, RecursionError):
            pass
    out_cfg = {k: v for k, v in cfg.items() if k != "optimizer"}
    if guidance is not None:
        # dfedit's default --cfg for this model is train.guidance (what its validation grids used);
        # an export may set it to the scale an evaluation chose, and the record says so.
        out_cfg["train"] = {**out_cfg.get("train", {}), "guidance": float(guidance)}
        record["default_guidance"] = {"value": float(guidance),
                                      "trained_with": cfg.get("train", {}).get("guidance")}
    files = _text_encoder_files(out_cfg)  # a local encoder travels inside the model: it is self-contained
    files.update({"ema.safetensors": tensor_bytes(ema), "config.json": json_bytes(out_cfg),
                  "record.json": json_bytes(record)})
    files[MANIFEST] = manifest_bytes({n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
    needed = sum(len(b) for b in files.values())
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent)  # what a killed export left (our temporaries only)
    created = not dest.exists()
    free = None
    tmp: Path | None = None
    try:
        free = free_space(dest.parent)
        if free is not None and free < needed:
            raise OSError(errno.ENOSPC, "No space left on device")
        free = None
        tmp = make_temp_dir(dest)
        for name, data in files.items():
            (tmp / name).parent.mkdir(exist_ok=True)
            write_file(tmp / name, data)
        fsync_dir(tmp)
        if created:
            os.replace(tmp, dest)  # one rename: DEST appears complete or not at all
        else:
            swap_dir(tmp, dest)  # one exchange: DEST is the old export or the new one, never a mix
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(dest.parent)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise DfeditError(f"{write_error(e, 'the export', dest, needed, free)}"
                          f"{'' if created else '; the previous export in it is intact'}") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
