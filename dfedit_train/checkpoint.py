"""Checkpoints: safetensors + one JSON config, written atomically, rotated; the run directory's
lock, resume and repair; and the dfedit loader.

A run directory (`--out`) looks like
    OUT/.lock                             {"pid": ..., "host": ...} while a dfedit-train owns it
    OUT/latest.json                       {"checkpoint": "checkpoints/step-00001234", "step": 1234}
    OUT/checkpoints/step-00001234/        config.json, model.safetensors, ema.safetensors,
                                          optimizer.safetensors
    OUT/samples/epoch-0010.png            validation grids
    OUT/log.jsonl                         one line per epoch
Each step directory is complete on its own and is renamed into place only after every file in it
is written and flushed, so a killed run leaves the previous checkpoint intact; `latest.json` is
replaced atomically afterwards. No pickle anywhere: tensors in safetensors, the rest in JSON.

Reading never trusts a file: configs go through one schema check (schema.py) before any weights
load; resume takes the newest step directory that is complete (every file present, no file
truncated, config valid) and whose tensors match its config and are finite, whatever state
`latest.json` is in, and says which one and why (docs/reliability.md).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from dfedit.cache import all_finite
from dfedit.files import atomic_write, free_space, human_size, pid_alive, write_error
from dfedit.files import fsync_dir, make_temp_dir, remove_stale_temps, swap_dir, write_file
# The read side (the format, completeness checks, loading a denoiser) is dfedit's; re-exported here.
from dfedit.emoji.checkpoint import (BUILTIN, FORMAT, FORMAT_VERSION, MANIFEST, STEP_RE, WEIGHTS, _latest,  # noqa: F401
                                     _tensors_problem, build_net, checkpoint_problem, describe,
                                     is_checkpoint_dir, load, load_denoiser, load_tensors, manifest_bytes,
                                     prompt_tokens, read_config, resolve, safetensors_problem, step_dirs)
from dfedit.errors import DfeditError



def _stderr(msg: str) -> None:
    """Default `log` of the functions below: one line on stderr."""
    print(msg, file=sys.stderr, flush=True)


_fsync_dir = fsync_dir


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=1).encode()


def _write_json(path: Path, obj) -> None:
    atomic_write(path, _json_bytes(obj))


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
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


# ---- the run directory: lock, litter, log ------------------------------------------------------

class RunLock:
    """OUT/.lock: one dfedit-train per run directory.

    The lock is an flock on OUT/.lock (released by the kernel when its holder dies, whatever kills
    it) and the file records the owner's pid, host and start time for the message a second
    trainer prints. Where flock is not supported, a lock whose pid no longer runs on this host is
    stale. A stale lock is taken over with a one-line notice. `release` removes OUT again if this
    lock created it and nothing else was written there.
    """

    def __init__(self, out: Path, log=_stderr):
        self.out, self.path, self.log = Path(out), Path(out) / ".lock", log
        self.fd: int | None = None
        self.created: list[Path] = []

    def _owner(self, fd: int) -> dict:
        try:  # through the descriptor we opened: never a file a link points at
            d = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError, RecursionError):
            return {}

    def _open(self) -> int:
        """OUT/.lock, created if missing; never through a link, never a file with other names."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC |
                         getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise DfeditError(f"{self.path} is a symbolic link, not a lock file; dfedit-train never writes "
                                  "through a link: remove it and run again") from None
            raise DfeditError(f"cannot open the lock {self.path}: {e.strerror or e}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a plain file"
            raise DfeditError(f"{self.path} is {what}, not a lock file of its own; remove it and run again")
        return fd

    def _busy(self, owner: dict) -> DfeditError:
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
        since = f", started {owner['started']}" if owner.get("started") else ""
        return DfeditError(f"{self.out} is in use by another dfedit-train ({who}{since}); wait for it to finish "
                           f"or stop it, or train into another --out")

    def acquire(self) -> "RunLock":
        import fcntl

        self.created = []  # directories this lock creates, innermost first: removed again if left empty
        p = self.out.absolute()
        while not p.exists() and p != p.parent:
            self.created.append(p)
            p = p.parent
        self.out.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for _ in range(10):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                raise self._busy(owner) from None
            except OSError:  # no flock on this filesystem: fall back to the recorded pid
                flocked = False
            try:  # the file we locked may have been removed by its releasing owner meanwhile
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            owner = self._owner(fd)
            pid = owner.get("pid")
            if owner and pid != os.getpid():
                if not flocked and (owner.get("host") != host or (isinstance(pid, int) and pid_alive(pid))):
                    os.close(fd)
                    raise self._busy(owner)
                self.log(f"note: took over the lock of a dfedit-train that is no longer running (pid {pid} on "
                         f"{owner.get('host', '?')}, started {owner.get('started', '?')})")
            data = _json_bytes({"pid": os.getpid(), "host": host,
                                "started": time.strftime("%Y-%m-%d %H:%M:%S %z")})
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            self.fd = fd
            return self
        raise DfeditError(f"could not take the lock {self.path}: it keeps changing")  # pragma: no cover

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        for d in self.created:  # only if empty: a run that failed before writing anything leaves nothing
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def clean_temps(out: Path, log=_stderr) -> None:
    """Remove what dead writers left in OUT, OUT/checkpoints and OUT/samples: temporaries of the one
    shape dfedit.files makes (`.NAME.dfedit-PID-RANDOM.tmp`, files and step directories), nothing
    else; a user's `.notes.tmp` or `.draft.tmp/` is never touched."""
    freed, n = 0, 0
    for d in (out, out / "checkpoints", out / "samples"):
        if d.is_dir():
            k, size = remove_stale_temps(d, mine_too=True)
            n, freed = n + k, freed + size
    if n:
        log(f"note: removed {n} temporary file(s) left by an interrupted save ({human_size(freed)})")


def trim_log(out: Path, step: int, log=_stderr) -> None:
    """Make log.jsonl agree with the checkpoint a run continues from: lines of steps past it (they
    will be trained again) and damaged lines (a kill mid-write) are dropped."""
    path = out / "log.jsonl"
    if path.is_symlink() or not path.is_file():  # a link planted there is not our log (appending refuses it)
        return
    keep, past, bad = [], 0, 0
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            s = e["step"]
            if not isinstance(s, int):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            bad += 1
            continue
        if s > step:
            past += 1
        else:
            keep.append(line)
    if past or bad:
        atomic_write(path, "".join(f"{x}\n" for x in keep).encode())
        why = ", ".join(x for x in (f"{past} past step {step} (they will be trained again)" if past else "",
                                    f"{bad} damaged" if bad else "") if x)
        log(f"note: log.jsonl: dropped {past + bad} line(s): {why}")


def archive_run(out: Path, log=_stderr) -> Path | None:
    """--restart: move the run's checkpoints, latest.json, log and grids into OUT/previous-TIME/."""
    names = [n for n in ("checkpoints", "latest.json", "log.jsonl", "samples") if (out / n).exists()]
    if not names:
        return None
    dest = out / time.strftime("previous-%Y%m%d-%H%M%S")
    i = 1
    while dest.exists():
        dest, i = out / f"{dest.name.split('.')[0]}.{i}", i + 1
    dest.mkdir()
    for n in names:
        os.replace(out / n, dest / n)
    log(f"note: --restart: the previous run ({', '.join(names)}) was moved to {dest}")
    return dest


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
    cfg_bytes = _json_bytes({**config, "format": FORMAT, "format_version": FORMAT_VERSION, "optimizer": opt_meta})
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
            data = _tensor_bytes(tensors)
            digests[name] = hashlib.sha256(data).hexdigest()
            write_file(tmp / name, data)
            del data
        write_file(tmp / "config.json", cfg_bytes)
        digests["config.json"] = hashlib.sha256(cfg_bytes).hexdigest()
        write_file(tmp / MANIFEST, manifest_bytes(digests))
        _fsync_dir(tmp)
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
    _fsync_dir(ckpts)
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
    from .train import param_groups

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


def find_resumable(out: Path, log=_stderr, verify: bool = True, repair: bool = True) -> Found | None:
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


# ---- export: a run's EMA weights as a small, inference-only model directory ---------------------

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


def _read_log(run_dir: Path) -> list[dict]:
    """log.jsonl, tolerating damaged lines, one entry per epoch (a repeated epoch keeps its last line)."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict = {}
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            e = json.loads(line)
            by_epoch[e["epoch"]] = e if isinstance(e, dict) else None
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
    return [e for _, e in sorted(by_epoch.items(), key=lambda kv: str(kv[0]).zfill(12)) if e]


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
    log = _read_log(ck.parent.parent)
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
    files.update({"ema.safetensors": _tensor_bytes(ema), "config.json": _json_bytes(out_cfg),
                  "record.json": _json_bytes(record)})
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
        _fsync_dir(tmp)
        if created:
            os.replace(tmp, dest)  # one rename: DEST appears complete or not at all
        else:
            swap_dir(tmp, dest)  # one exchange: DEST is the old export or the new one, never a mix
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(dest.parent)
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
