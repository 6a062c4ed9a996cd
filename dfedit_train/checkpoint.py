"""Checkpoints: writing one (safetensors + one JSON config, atomically, with rotation) and
finding the one a run resumes from.

    OUT/checkpoints/step-00001234/        config.json, model.safetensors, ema.safetensors,
                                          optimizer.safetensors, manifest.json
Each step directory is complete on its own and is renamed into place only after every file in it
is written and flushed, so a killed run leaves the previous checkpoint intact; `latest.json` is
replaced atomically afterwards. No pickle anywhere: tensors in safetensors, the rest in JSON
(the optimizer state flattened into both).

Reading never trusts a file: configs go through one schema check (dfedit.emoji.schema) before
any weights load; resume takes the newest step directory that is complete (every file present,
no file truncated, config valid) and whose tensors match its config and are finite, whatever
state `latest.json` is in, and says which one and why (docs/reliability.md). The read side (the
format, completeness checks, loading a denoiser) is dfedit's: dfedit.emoji.checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from dfedit.cache import all_finite

from dfedit.files import atomic_write, free_space, write_error
from dfedit.emoji.checkpoint import (MANIFEST, WEIGHTS, _latest, _tensors_problem, checkpoint_problem,
                                     manifest_bytes, read_config, step_dirs)
from dfedit.emoji.config import FORMAT, FORMAT_VERSION
from dfedit.errors import DfeditError
from dfedit.files import fsync_dir, make_temp_dir, swap_dir, write_file

from .rundir import stderr_line


def json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=1).encode()


def _write_json(path: Path, obj) -> None:
    atomic_write(path, json_bytes(obj))


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors file for `tensors` (the same bytes `save_file` writes), in memory, so that
    it is written with ordinary file I/O: a full disk is then an OSError with its errno."""
    return st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values()) + 200 * len(tensors) + 64


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


def param_groups(net: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's two groups, in the order a checkpoint's optimizer state records them (resume checks it)."""
    # Decay kernels and matrices only: decaying norms, biases and the null token just shrinks them.
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---- writing -----------------------------------------------------------------------------------

def save(out: Path, step: int, config: dict, model: dict, ema: dict, optimizer: dict, keep: int,
         protect: Path | None = None) -> Path:
    """Write checkpoints/step-N atomically, point latest.json at it, rotate.

    Rotation keeps the newest `keep` step directories and `protect` (the last checkpoint known to
    load and train cleanly). A failed write (disk full) removes its temporary directory and raises
    one sentence; the previous checkpoint and latest.json are untouched.
    """
    ckpts = out / "checkpoints"
    final = ckpts / f"step-{step:08d}"
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    cfg_bytes = json_bytes({**config, "format": FORMAT, "format_version": FORMAT_VERSION, "optimizer": opt_meta})
    parts = (("model.safetensors", model), ("ema.safetensors", ema), ("optimizer.safetensors", opt_tensors))
    needed = sum(_nbytes(t) for _, t in parts) + len(cfg_bytes)
    previous = [p.name for _, p in step_dirs(ckpts)]
    intact = f"; the previous checkpoint ({previous[-1]}) is intact" if previous else "; nothing was saved"

    free = None
    tmp: Path | None = None

    def failed(e: OSError) -> DfeditError:
        return DfeditError(f"{write_error(e, 'checkpoint', final, needed, free)}{intact}")

    try:
        ckpts.mkdir(parents=True, exist_ok=True)
        free = free_space(ckpts)
        if free is not None and free < needed:  # say so before writing anything
            raise OSError(errno.ENOSPC, "No space left on device")
        free = None  # a failure below measures it again
        tmp = make_temp_dir(final)  # .step-N.dfedit-PID-RANDOM.tmp: ours alone
        digests = {}
        for name, tensors in parts:
            data = tensor_bytes(tensors)
            digests[name] = hashlib.sha256(data).hexdigest()
            write_file(tmp / name, data)
            del data
        write_file(tmp / "config.json", cfg_bytes)
        digests["config.json"] = hashlib.sha256(cfg_bytes).hexdigest()
        write_file(tmp / MANIFEST, manifest_bytes(digests))
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step: replace it whole
            swap_dir(tmp, final)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise failed(e) from None
    except BaseException:  # Ctrl-C / SIGTERM inside a save: leave no temporary behind
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(ckpts)
    try:
        _write_json(out / "latest.json", {"checkpoint": f"checkpoints/{final.name}", "step": step})
    except OSError as e:
        raise DfeditError(f"{write_error(e, 'latest.json', out / 'latest.json', 100)}; checkpoint {final.name} "
                          "itself is complete and the next start resumes from it") from None
    for s, old in step_dirs(ckpts)[:-keep or None]:
        if old != final and (protect is None or old.resolve() != Path(protect).resolve()):
            shutil.rmtree(old, ignore_errors=True)
    return final


# ---- checking what is on disk ------------------------------------------------------------------

def _expected_shapes(cfg: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    from dfedit.emoji.config import ModelConfig, from_dict
    from dfedit.emoji.unet import UNet

    with torch.device("meta"):
        net = UNet(from_dict(ModelConfig, cfg["model"]))
    return net, {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}


def weights_problem(ck: Path, cfg: dict) -> str | None:
    """Load a checkpoint's three tensor files and say why they cannot be resumed: tensors that do
    not fit the model its config describes (another preset's weights), an optimizer state of
    another shape, NaN or inf anywhere. None when they are good."""
    net, expect = _expected_shapes(cfg)
    tensors = {}
    for which in WEIGHTS:
        try:
            tensors[which] = load_file(str(ck / f"{which}.safetensors"))
        except Exception as e:
            return f"{which}.safetensors is unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    for which in ("model", "ema"):
        why = _tensors_problem(f"{which}.safetensors", tensors[which], expect, check_dtype=True)
        if why:
            return why
    params = [p for g in param_groups(net, 0.0) for p in g["params"]]
    groups = cfg["optimizer"]["param_groups"]
    flat = [i for g in groups for i in g["params"]]
    if flat != list(range(len(params))) or len(groups) != 2:
        return "the optimizer state in config.json is for another model (its parameter groups do not match)"
    for key, t in tensors["optimizer"].items():
        idx, _, kind = key.partition(".")
        if not idx.isdigit() or int(idx) >= len(params):
            return f"optimizer.safetensors has an unexpected {key!r}"
        if kind in ("exp_avg", "exp_avg_sq") and tuple(t.shape) != tuple(params[int(idx)].shape):
            return (f"optimizer.safetensors is for another model ({key!r} is {tuple(t.shape)}, the parameter is "
                    f"{tuple(params[int(idx)].shape)})")
        if not all_finite(t):
            return f"optimizer.safetensors holds NaN or infinite values (in {key!r})"
    return None


@dataclass
class Found:
    path: Path
    config: dict
    notes: list[str] = field(default_factory=list)


def find_resumable(out: Path, log=stderr_line, verify: bool = True, repair: bool = True) -> Found | None:
    """The newest complete, finite checkpoint of a run directory, whatever state latest.json is in.

    None when the directory holds no checkpoint at all. Every anomaly (latest.json damaged,
    missing or behind; a newer step directory that is incomplete, truncated, of another model or
    not finite) is logged in one line each; unusable step directories are renamed to
    checkpoints/damaged-step-N (kept for inspection, ignored from then on) and latest.json is
    repaired (unless repair=False: another process of the same run does that). Raises when
    checkpoints exist but none can be resumed.
    """
    ckpts = out / "checkpoints"
    candidates = step_dirs(ckpts)[::-1]
    named, latest_why = _latest(out)
    if not candidates:
        if latest_why and (out / "latest.json").exists():
            log(f"note: {latest_why} and {out} holds no checkpoints; starting from step 0")
        return None
    rejected, chosen, cfg = [], None, None
    for _, ck in candidates:
        why = checkpoint_problem(ck, "resume")
        if why is None:
            cfg = read_config(ck, "resume")
            why = weights_problem(ck, cfg) if verify else None
        if why is None:
            chosen = ck
            break
        rejected.append((ck, why))
    if chosen is None:
        listing = "; ".join(f"{ck.name}: {why}" for ck, why in rejected[:3])
        raise DfeditError(f"{out} holds {len(rejected)} checkpoint(s) but none can be resumed ({listing}): pass "
                          "--restart to start again (the old ones are kept), or train into a new --out")
    notes = []
    if latest_why:
        notes.append(f"{latest_why}; resuming from the newest complete checkpoint, {chosen.name}")
    elif named is not None and named.resolve() != chosen.resolve():
        if named.name in {ck.name for ck, _ in rejected}:
            notes.append(f"latest.json names {named.name}, which cannot be resumed; resuming from {chosen.name}")
        else:
            notes.append(f"latest.json names {named.name}, but {chosen.name} is newer and complete (a save was "
                         f"interrupted before latest.json was updated); resuming from {chosen.name}")
    for ck, why in rejected:
        dest = ck.with_name("damaged-" + ck.name)
        where = "left in place"
        if repair:
            try:
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(ck, dest)
                where = f"moved to checkpoints/{dest.name}"
            except OSError:
                pass
        notes.append(f"skipping {ck.name}: {why} ({where})")
    if not repair:
        return Found(chosen, cfg, notes)
    for n in notes:
        log(f"note: {n}")
    if named is None or named.resolve() != chosen.resolve():
        _write_json(out / "latest.json", {"checkpoint": f"checkpoints/{chosen.name}", "step": cfg["state"]["step"]})
    return Found(chosen, cfg, notes)
