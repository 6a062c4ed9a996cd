"""Reading a dfedit-train checkpoint: the run directory's layout, the completeness checks, and the
checkpoint as a dfedit `Denoiser` (what `--model RUN_DIR`, `--model CKPT` and `--model emoji` load).

A run directory (dfedit-train's `--out`) looks like
    OUT/latest.json                       {"checkpoint": "checkpoints/step-00001234", "step": 1234}
    OUT/checkpoints/step-00001234/        config.json, model.safetensors, ema.safetensors,
                                          optimizer.safetensors
and an exported model (dfedit/weights/emoji) is one such directory holding config.json,
ema.safetensors and record.json. No pickle anywhere: tensors in safetensors, the rest in JSON.

Reading never trusts a file: configs go through one schema check (schema.py) before any weights
load, and a run directory whose latest.json is damaged is read from its newest complete
checkpoint. Writing, resuming and repairing a run directory are the trainer's
(dfedit_train/checkpoint.py), which imports this module; this one never imports the trainer.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..cache import all_finite, notice
from ..files import read_json_file
from ..errors import DfeditError
from ..constants import BUILTIN_MODELS
from .config import FORMAT

WEIGHTS = ("model", "ema", "optimizer")
STEP_RE = re.compile(r"^step-(\d+)$")
# Written last into every checkpoint and export: the sha256 of each of its other files, so that a
# flipped bit or a file from another save is found before it is used. Directories without one
# (written before it existed, like tests/train/data/legacy-run) get the other checks only.
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dfedit/manifest"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest_bytes(digests: dict[str, str]) -> bytes:
    """manifest.json for files whose sha256 hex digests are `digests` (name -> digest)."""
    return json.dumps({"format": MANIFEST_FORMAT, "sha256": dict(sorted(digests.items()))}, indent=1).encode()


def manifest_problem(ck: Path, names: list[str]) -> str | None:
    """Why files `names` of `ck` do not match its manifest.json (None when they do, or when there is
    no manifest: a directory written before manifests existed)."""
    path = ck / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    try:
        obj = read_json_file(path, MANIFEST)
    except DfeditError as e:
        return str(e).replace(f" {path}", "")
    digests = obj.get("sha256") if isinstance(obj, dict) and obj.get("format") == MANIFEST_FORMAT else None
    if not isinstance(digests, dict):
        return f"{MANIFEST} is not a dfedit manifest"
    for name in names:
        if name not in digests:
            return f"{MANIFEST} does not list {name}"
        try:
            ok = file_sha256(ck / name) == digests[name]
        except OSError as e:
            return f"{name} is unreadable ({e.strerror or e})"
        if not ok:
            return f"{name} does not match {MANIFEST} (damaged, or left by another save)"
    return None


def step_dirs(ckpts: Path) -> list[tuple[int, Path]]:
    """(step, directory) of checkpoints/step-N, oldest first."""
    if not ckpts.is_dir():
        return []
    out = []
    for p in ckpts.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m[1]), p))
    return sorted(out)


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unusable, from its header and size alone (no data read)."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            return f"{path.name} is a directory"
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is empty or truncated"
            n = int.from_bytes(head, "little")
            if n > size - 8 or n > 1 << 28:
                return f"{path.name} has a damaged header"
            hdr = json.loads(f.read(n))
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError, RecursionError) as e:
        return f"{path.name} is unreadable ({e.__class__.__name__})"
    try:
        end = max((v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, AttributeError):
        return f"{path.name} has a damaged header"
    if size != 8 + n + end:
        return f"{path.name} is truncated ({size} of {8 + n + end} bytes)"
    return None


def read_config(ck: Path, purpose: str = "model") -> dict:
    from .schema import check_config

    path = ck / "config.json"
    return check_config(read_json_file(path, "checkpoint config"), path, purpose)


def _tensors_problem(name: str, tensors: dict[str, torch.Tensor], expect: dict, check_dtype: bool) -> str | None:
    missing = sorted(set(expect) - set(tensors))
    extra = sorted(set(tensors) - set(expect))
    if missing or extra:
        return (f"{name} does not hold the model config.json describes "
                f"({'lacks ' + repr(missing[0]) if missing else 'has an unexpected ' + repr(extra[0])})")
    for k, (shape, dtype) in expect.items():
        t = tensors[k]
        if tuple(t.shape) != shape:
            return f"{name} does not hold the model config.json describes ({k!r} is {tuple(t.shape)}, not {shape})"
        if check_dtype and t.dtype != dtype:
            return f"{name}: {k!r} is {t.dtype}, not {dtype}"
        if t.is_floating_point() != dtype.is_floating_point:  # int8 weights would give a garbage image
            return f"{name}: {k!r} is {t.dtype}, not a floating-point type (float16, bfloat16 or float32)"
    bad = next((k for k, t in tensors.items() if not all_finite(t)), None)
    if bad is not None:
        return f"{name} holds NaN or infinite values (in {bad!r})"
    return None


def _problem(ck: Path, purpose: str) -> tuple[str | None, dict | None]:
    """(why the checkpoint cannot be used, None), or (None, its validated config): one read."""
    try:
        cfg = read_config(ck, purpose)
    except DfeditError as e:
        return str(e).replace(str(ck / "config.json"), "config.json").replace(str(ck) + "/", ""), None
    weights = WEIGHTS if purpose == "resume" else ("ema",)
    for which in weights:
        why = safetensors_problem(ck / f"{which}.safetensors")
        if why:
            return why, None
    # Resuming checks every byte; a model to sample checks its weights when they load (load_tensors).
    why = manifest_problem(ck, ["config.json"] + ([f"{w}.safetensors" for w in weights] if purpose == "resume"
                                                  else []))
    if why:
        return why, None
    return None, cfg


def checkpoint_problem(ck: Path, purpose: str = "resume") -> str | None:
    """Cheap completeness check: valid config, every tensor file present and not truncated."""
    return _problem(ck, purpose)[0]


def _latest(run: Path) -> tuple[Path | None, str | None]:
    """(checkpoint latest.json names, None) or (None, what is wrong with latest.json)."""
    from .schema import latest_problem

    path = run / "latest.json"
    if not path.exists():
        return None, "latest.json is missing"
    try:
        obj = read_json_file(path, "latest.json")
    except DfeditError as e:
        return None, str(e).replace(f" {path}", "")
    why = latest_problem(obj)
    if why:
        return None, f"latest.json {why}"
    ck = run / obj["checkpoint"]
    if not ck.is_dir():
        return None, f"latest.json names {obj['checkpoint']}, which does not exist"
    return ck, None


# ---- reading a model ---------------------------------------------------------------------------

# `--model emoji`: the model that ships inside the dfedit package (dfedit-train's `export` writes one).
BUILTIN = BUILTIN_MODELS


_UNPARSED = object()


def _own_config(p: Path, parsed: list | None = None) -> bool:
    """A config.json that says it is ours, or a damaged one beside our weight files (so that its
    damage is reported as such, not as "not a diffusers model"). `parsed` receives the parsed
    file (or _UNPARSED), so that the caller need not read it again."""
    cfg = p / "config.json"
    obj = _UNPARSED
    try:
        obj = json.loads(cfg.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        pass
    if parsed is not None:
        parsed.append(obj)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return True
    return cfg.exists() and not (p / "model_index.json").exists() and \
        any((p / f"{w}.safetensors").exists() for w in ("ema", "model"))


def _looks_like_run(p: Path) -> bool:
    return (p / "latest.json").exists() or bool(step_dirs(p / "checkpoints"))


def _resolve(path: str | Path) -> tuple[Path | None, dict | None]:
    """`resolve`, with the validated config when it was read on the way (else None)."""
    if str(path) in BUILTIN:
        path = BUILTIN[str(path)]
    p = Path(path).expanduser()
    if (p / "config.json").exists():
        parsed: list = []
        if not _own_config(p, parsed):
            return None, None
        obj = parsed[0]
        return p, (check_config_of(p, obj) if obj is not _UNPARSED else None)
    if not _looks_like_run(p):
        return None, None
    named, why = _latest(p)
    if named is not None:
        problem, cfg = _problem(named, "model")
        if problem is None:
            return named, cfg
    for _, ck in step_dirs(p / "checkpoints")[::-1]:
        problem, cfg = _problem(ck, "model")
        if problem is None:
            notice(f"{why or f'latest.json names {named.name}, which is incomplete'}; using the newest complete "
                   f"checkpoint of {p}, {ck.name}")
            return ck, cfg
    return None, None


def check_config_of(ck: Path, obj) -> dict:
    from .schema import check_config
    return check_config(obj, ck / "config.json", "model")


def _own_text_encoder(ck: Path, cfg: dict) -> dict:
    """An exported model (a config without optimizer state: the kind that is shared) may name only
    the packaged MiniLM or a directory inside itself as its text encoder; a relative name is read
    from the model directory. A run's own checkpoint keeps the encoder it was trained with."""
    name = cfg["text_encoder"]["name"]
    if name == "minilm" or "optimizer" in cfg:
        return cfg
    root = ck.resolve()
    p = (ck / name).resolve()
    if root not in p.parents or not p.is_dir():
        raise DfeditError(f"{ck / 'config.json'}: text_encoder.name must be 'minilm' or a directory inside the "
                          f"model directory, got {name[:80]!r}")
    cfg = {**cfg, "text_encoder": {**cfg["text_encoder"], "name": str(p)}}
    if cfg["data"].get("text_encoder") == name:  # what `dfedit-train eval` reads
        cfg["data"] = {**cfg["data"], "text_encoder": str(p)}
    return cfg


def resolve(path: str | Path) -> Path | None:
    """The checkpoint directory a path names: itself, a run directory's latest checkpoint (or its
    newest complete one when latest.json is damaged), or a built-in model's name ("emoji"; write
    ./emoji for a local directory of that name). None when it is not a dfedit-train checkpoint."""
    return _resolve(path)[0]


def is_checkpoint_dir(path: str | Path) -> bool:
    """True for a dfedit-train checkpoint directory or a run directory (`--out`), also a damaged
    one (loading it then says what is wrong instead of trying it as a diffusers model)."""
    if str(path) in BUILTIN:
        return True
    p = Path(path).expanduser()
    if (p / "config.json").exists():
        return _own_config(p)
    return _looks_like_run(p)


def load(path: str | Path) -> tuple[Path, dict]:
    """(checkpoint dir, validated config); one sentence naming the file and the key otherwise.
    config.json is read once."""
    ck, cfg = _resolve(path)
    if ck is None:
        p = Path(BUILTIN.get(str(path), path)).expanduser()
        if _looks_like_run(p):
            found = [s.name for _, s in step_dirs(p / "checkpoints")]
            raise DfeditError(f"{path} has no complete checkpoint (step directories: {', '.join(found) or 'none'}; "
                              f"{_latest(p)[1] or 'latest.json names an incomplete one'})")
        if (p / "config.json").exists():
            raise DfeditError(f"{p / 'config.json'} is not a dfedit-train config")
        raise DfeditError(f"{path} is not a dfedit-train checkpoint (no config.json or latest.json)")
    return ck, _own_text_encoder(ck, cfg if cfg is not None else read_config(ck, "model"))


def open_model(path: str | Path) -> tuple[Path, dict] | None:
    """What `--model` gets for an emoji model: (checkpoint dir, validated config), reading its
    config.json once; None when `path` is no dfedit-train checkpoint, run or built-in name (another
    backend's model); one sentence when it is one but cannot be used."""
    if str(path) not in BUILTIN:
        p = Path(path).expanduser()
        if not (p / "config.json").exists() and not _looks_like_run(p):
            return None
        if (p / "config.json").exists():
            parsed: list = []
            if not _own_config(p, parsed):
                return None
            obj = parsed[0]
            cfg = check_config_of(p, obj) if obj is not _UNPARSED else read_config(p, "model")
            return p, _own_text_encoder(p, cfg)
    return load(path)


def describe(path: str | Path):
    """(NoiseSchedule, image size) from the config alone: what dfedit checks before loading weights."""
    from .config import schedule_of

    _, cfg = load(path)
    return schedule_of(cfg), int(cfg["model"]["image_size"])


def load_tensors(ck: Path, which: str) -> dict[str, torch.Tensor]:
    f = ck / f"{which}.safetensors"
    why = safetensors_problem(f)
    if why:
        raise DfeditError(f"{f} cannot be used: {why.replace(f.name + ' ', '', 1)}; the checkpoint is damaged")
    why = manifest_problem(ck, ["config.json", f.name])
    if why:
        raise DfeditError(f"{ck} cannot be used: {why}; the checkpoint or export is damaged or mixed: save or "
                          "export it again")
    try:
        return load_file(str(f))
    except Exception as e:
        raise DfeditError(f"could not read {f}: {str(e).splitlines()[0]}") from None


def build_net(cfg: dict):
    from .config import ModelConfig, from_dict
    from .unet import UNet

    return UNet(from_dict(ModelConfig, cfg["model"]))


def load_denoiser(path: str | Path, device="cpu", dtype=torch.float32, weights: str = "ema", cache_dir=None,
                  opened: tuple[Path, dict] | None = None):
    """A checkpoint as a dfedit `Denoiser` (EMA weights unless weights="model"); `cache_dir` is
    where its prompt embeddings are cached (default: the user cache). `opened`: what `open_model`
    returned for it, so that its config is not read again."""
    from .denoiser import EmojiDenoiser

    from .config import ModelConfig, from_dict, size_estimate

    ck, cfg = opened if opened is not None else load(path)
    tensors = load_tensors(ck, weights)
    need, held = size_estimate(from_dict(ModelConfig, cfg["model"]))[0], sum(t.numel() for t in tensors.values())
    if held < need:  # before building: a config may describe a far larger network than its weights
        raise DfeditError(f"{ck}: {weights}.safetensors holds {held:,} values, but the model its config.json "
                          f"describes has at least {need:,} parameters; the checkpoint is damaged")
    # The expected shapes come from the net that is built anyway: building it on the meta device
    # instead imports torch._dynamo and sympy (meta randn), 0.8 s of a 2 s `dfedit sample --model emoji`.
    net = build_net(cfg)
    expect = {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}
    why = _tensors_problem(f"{weights}.safetensors", tensors, expect, check_dtype=False)
    if why:
        raise DfeditError(f"{ck}: {why}; the checkpoint is damaged")
    net.load_state_dict(tensors)
    return EmojiDenoiser.from_config(net, cfg, name=str(ck), device=device, dtype=dtype, cache_dir=cache_dir)
