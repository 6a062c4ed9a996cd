"""One schema check for every config dfedit-train writes, dfedit reads or a user gives, run before any
weights load.

The same rules check a checkpoint's `config.json`, an exported model's `config.json`, `latest.json`
and the options a user types: a missing key, a wrong type or an impossible value becomes one
sentence that names the file (or the option) and the key, e.g.

    runs/x/checkpoints/step-00000040/config.json: model.image_size must be a positive integer, got 'thirty-two'
    --save-every must be at least 1, got 0

Types come from the config dataclasses (so a field added there is checked as its default's type);
value rules are listed here once. Keys that today's format always has are required; newer
dataclass fields may be missing from older files (their defaults apply).
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable

from ..errors import DfeditError
from ..schedule import PREDICTION_TYPES
from .config import FORMAT, FORMAT_VERSION, DataConfig, DiffusionConfig, ModelConfig, TrainConfig, from_dict


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _list(of: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, tuple)) and all(of(x) for x in v)


_KIND_CHECK = {"int": _int, "number": _num, "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
               "list of integers": _list(_int), "list of true/false flags": _list(lambda v: isinstance(v, bool)),
               "list of numbers": _list(_num), "object": lambda v: isinstance(v, dict),
               "integer or list of integers": lambda v: _int(v) or _list(_int)(v),
               "list of strings": _list(lambda v: isinstance(v, str))}
_KIND_NAME = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
              "object": "a JSON object", "integer or list of integers": "an integer or a list of integers"}


def _kind_of(default) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (tuple, list)):
        if default and all(isinstance(x, bool) for x in default):
            return "list of true/false flags"
        if default and all(_int(x) for x in default):
            return "list of integers"
        return "list of numbers"
    return "object"


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def _finite(v) -> bool:
    return _num(v) and math.isfinite(v)


# Value rules: (predicate, what it must be). Keys without a rule only need the right type.
AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
AT_LEAST_0 = (lambda v: v >= 0, "at least 0")
POSITIVE = (lambda v: _finite(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = (lambda v: _finite(v) and v >= 0, "a finite number >= 0")
PROBABILITY = (lambda v: _finite(v) and 0 <= v <= 1, "a number in [0, 1]")
BELOW_1 = (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)")
NON_EMPTY = (lambda v: bool(v.strip()), "a non-empty string")


def between(lo: int, hi: int) -> tuple[Callable[[Any], bool], Callable[[Any], str]]:
    """Every size field has an upper bound: a config must never make dfedit allocate without limit.
    The text says the bound that was crossed."""
    return (lambda v: lo <= v <= hi, lambda v: f"at least {lo}" if v < lo else f"at most {hi:,}")


def rule_text(rule, v) -> str:
    return rule[1](v) if callable(rule[1]) else rule[1]


def _each(lo: int, hi: int, most: int, what: str) -> tuple[Callable[[Any], bool], str]:
    vals = lambda v: v if isinstance(v, (list, tuple)) else [v]  # noqa: E731
    return (lambda v: 1 <= len(vals(v)) <= most and all(lo <= x <= hi for x in vals(v)),
            f"{what} between {lo} and {hi:,} (at most {most} levels)")


LEVELS = 8


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.image_size": between(1, 1024),
    "model.channels": _each(1, 4096, LEVELS, "a non-empty list of widths"),
    "model.num_res_blocks": _each(1, 16, LEVELS, "one number, or one per level,"),
    "model.self_attn": (lambda v: len(v) <= LEVELS, f"at most {LEVELS} flags"),
    "model.cross_attn": (lambda v: len(v) <= LEVELS, f"at most {LEVELS} flags"),
    "model.patch": between(1, 16),
    "model.head_dim": between(1, 4096),
    "model.time_dim": between(0, 16384),
    "model.text_dim": between(1, 16384),
    "model.dropout": BELOW_1,
    "diffusion.num_train_timesteps": between(2, 100_000),
    "diffusion.beta_schedule": (lambda v: v in ("squaredcos_cap_v2", "linear", "sigmoid", "scaled_linear", "flow"),
                                "one of squaredcos_cap_v2 (cosine), linear, sigmoid, flow"),
    "diffusion.prediction_type": (lambda v: v in PREDICTION_TYPES,
                                  f"a known objective ({', '.join(PREDICTION_TYPES)})"),
    "diffusion.min_snr_gamma": NON_NEGATIVE,
    "diffusion.cfg_dropout": PROBABILITY,
    "train.epochs": between(1, 10_000_000),
    "train.batch_size": between(1, 65536),
    "train.grad_accum": between(1, 4096),
    "train.lr": POSITIVE,
    "train.min_lr": NON_NEGATIVE,
    "train.warmup_steps": between(0, 10**12),
    "train.lr_schedule": (lambda v: v in ("cosine", "constant"), "cosine or constant"),
    "train.weight_decay": NON_NEGATIVE,
    "train.betas": (lambda v: len(v) == 2 and all(_finite(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "train.grad_clip": NON_NEGATIVE,
    "train.ema_decay": PROBABILITY,
    "train.mixed_precision": (lambda v: v in ("no", "bf16", "fp16"), "no, bf16 or fp16"),
    "train.flip_prob": PROBABILITY,
    "train.seed": (lambda v: -2**63 <= v < 2**63, "a 64-bit integer"),
    "train.save_every": between(1, 10_000_000),
    "train.sample_every": between(0, 10_000_000),
    "train.keep_checkpoints": between(1, 100_000),
    "train.grid_prompts": between(1, 1024),
    "train.sample_stride": between(1, 100_000),
    "train.guidance": (_finite, "a finite number"),
    "data.source": NON_EMPTY,
    "data.vendor": NON_EMPTY,
    "data.val_fraction": BELOW_1,
    "data.text_encoder": NON_EMPTY,
    "data.max_length": between(1, 512),
    "data.subset": between(0, 10**9),
    "data.pair_holdout": BELOW_1,
    "data.caption_name_share": PROBABILITY,
    "data.tone_share": NON_NEGATIVE,
    "diffusion.style_dropout": PROBABILITY,
    "model.styles": (lambda v: len(v) <= 64 and len(set(v)) == len(v) and all(s.strip() for s in v),
                     "at most 64 distinct non-empty names"),
    "data.sets": (lambda v: len(v) <= 16 and len(set(v)) == len(v) and all(s.strip() for s in v),
                  "at most 16 distinct non-empty names"),
}
# Fields whose type is wider than their default's.
KINDS = {"model.num_res_blocks": "integer or list of integers", "model.styles": "list of strings",
         "data.sets": "list of strings"}

SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig, "data": DataConfig}

# What today's format (format_version 1) always writes: required when the section is needed.
REQUIRED = {
    "model": {"image_size", "channels", "num_res_blocks", "self_attn", "cross_attn", "head_dim", "time_dim",
              "text_dim"},
    "diffusion": {"num_train_timesteps", "beta_schedule", "prediction_type"},
    "train": {"epochs", "batch_size", "grad_accum", "lr", "min_lr", "warmup_steps", "weight_decay", "betas",
              "grad_clip", "ema_decay", "mixed_precision", "seed", "save_every", "keep_checkpoints"},
    "data": {"mean", "std"},
    "text_encoder": {"name", "max_length", "dim"},
    "state": {"step", "epoch", "steps_per_epoch", "skipped_steps"},
}
# Keys a checkpoint's data section has beyond DataConfig's fields.
DATA_EXTRAS: dict[str, tuple[str, tuple[Callable[[Any], bool], str] | None]] = {
    "mean": ("list of numbers", (lambda v: len(v) == 3 and all(_finite(x) for x in v), "three finite numbers")),
    "std": ("list of numbers", (lambda v: len(v) == 3 and all(_finite(x) and x > 0 for x in v),
                                "three finite numbers > 0")),
    "source_desc": ("str", None), "n_train": ("int", AT_LEAST_0), "n_val": ("int", AT_LEAST_0),
    "image_size": ("int", between(1, 1024)),
}
TEXT_ENCODER = {"name": ("str", NON_EMPTY), "identity": ("str", None), "max_length": ("int", between(1, 512)),
                "dim": ("int", between(1, 16384))}
STATE = {"step": ("int", AT_LEAST_0), "epoch": ("int", AT_LEAST_0), "steps_per_epoch": ("int", AT_LEAST_1),
         "total_steps": ("int", AT_LEAST_0), "images_seen": ("int", AT_LEAST_0),
         "skipped_steps": ("int", AT_LEAST_0), "world_size": ("int", AT_LEAST_1)}


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


class _Checker:
    def __init__(self, where: str):
        self.where = where  # "path/config.json" or "" for options

    def fail(self, key: str, problem: str):
        raise DfeditError(f"{self.where}: {key} {problem}")

    def field(self, key: str, value, kind: str, rule) -> None:
        if not _KIND_CHECK[kind](value):
            self.fail(key, f"must be {_KIND_NAME.get(kind, 'a ' + kind)}, got {_show(value)}")
        if rule is not None and not rule[0](value):
            self.fail(key, f"must be {rule_text(rule, value)}, got {_show(value)}")

    def section(self, cfg: dict, name: str, required: bool, extras: dict | None = None, known: dict | None = None):
        if name not in cfg:
            if required:
                raise DfeditError(f"{self.where} has no {name!r} section (damaged, or not a dfedit-train config)")
            return
        sec = cfg[name]
        if not isinstance(sec, dict):
            self.fail(name, f"must be a JSON object, got {_show(sec)}")
        spec: dict[str, tuple[str, Any]] = dict(known or {})
        if name in SECTIONS:
            for f in fields(SECTIONS[name]):
                key = f"{name}.{f.name}"
                spec[f.name] = (KINDS.get(key) or _kind_of(_default(f)), RULES.get(key))
        spec.update(extras or {})
        for k in REQUIRED.get(name, ()):
            if k not in sec:
                raise DfeditError(f"{self.where} has no {name}.{k} (damaged, or not a dfedit-train config)")
        for k, v in sec.items():
            if k not in spec:
                if name in SECTIONS:  # the dataclass would reject it: say so here, naming the file
                    self.fail(f"{name}.{k}", "is not a known setting (written by another version?)")
                continue
            kind, rule = spec[k]
            self.field(f"{name}.{k}", v, kind, rule)


def check_config(cfg, path: str | Path, purpose: str = "model") -> dict:
    """Validate a checkpoint or exported-model config (already parsed JSON).

    purpose: "model" (what loading a denoiser needs) or "resume" (also train, state, optimizer).
    Returns cfg; raises DfeditError naming `path` and the key.
    """
    c = _Checker(str(path))
    if not isinstance(cfg, dict):
        raise DfeditError(f"{path} must hold a JSON object, not {type(cfg).__name__}")
    if "format" in cfg and cfg["format"] != FORMAT:
        c.fail("format", f"must be {FORMAT!r}, got {_show(cfg['format'])} (not a dfedit-train model)")
    if "format_version" in cfg:
        v = cfg["format_version"]
        c.field("format_version", v, "int", AT_LEAST_1)
        if v > FORMAT_VERSION:
            raise DfeditError(f"{path} was written by a newer dfedit-train (format_version {v}); upgrade to load it")
    resume = purpose == "resume"
    c.section(cfg, "model", True)
    c.section(cfg, "diffusion", True)
    c.section(cfg, "data", True, extras=DATA_EXTRAS)
    c.section(cfg, "text_encoder", True, known=TEXT_ENCODER)
    c.section(cfg, "train", resume)
    c.section(cfg, "state", resume, known=STATE)
    if "state" in cfg and cfg["state"].get("scaler") is not None and not isinstance(cfg["state"]["scaler"], dict):
        c.fail("state.scaler", f"must be a JSON object or null, got {_show(cfg['state']['scaler'])}")
    for k in ("schedule", "versions"):
        if k in cfg and not isinstance(cfg[k], dict):
            c.fail(k, f"must be a JSON object, got {_show(cfg[k])}")
    if resume:
        _check_optimizer(c, cfg)
    m = cfg["model"]
    n = len(m["channels"])
    for k in ("self_attn", "cross_attn"):
        if len(m[k]) != n:
            c.fail(f"model.{k}", f"must have one flag per level ({n}), got {len(m[k])}")
    try:  # the model's own layout rules (levels, divisibility, head size), naming the file
        mc = from_dict(ModelConfig, m)
        mc.validate()
    except DfeditError as e:
        c.fail("model", f"is impossible: {e}")
    why = size_problem(mc)
    if why:
        c.fail("model", why)
    if cfg["text_encoder"]["dim"] != m["text_dim"]:
        c.fail("text_encoder.dim", f"({cfg['text_encoder']['dim']}) must equal model.text_dim ({m['text_dim']})")
    if resume and "train" in cfg:
        T = cfg["diffusion"]["num_train_timesteps"]
        if cfg["train"].get("sample_stride", 1) > T:
            c.fail("train.sample_stride", f"must be at most diffusion.num_train_timesteps ({T})")
    return cfg


def _check_optimizer(c: _Checker, cfg: dict) -> None:
    opt = cfg.get("optimizer")
    if not isinstance(opt, dict):
        raise DfeditError(f"{c.where} has no optimizer state (not a resumable checkpoint; an exported model "
                          "cannot be resumed)")
    groups = opt.get("param_groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        c.fail("optimizer.param_groups", "must be a non-empty list of JSON objects")
    for i, g in enumerate(groups):
        if not _list(_int)(g.get("params")):
            c.fail(f"optimizer.param_groups[{i}].params", f"must be a list of integers, got {_show(g.get('params'))}")
    if not isinstance(opt.get("scalars", {}), dict):
        c.fail("optimizer.scalars", "must be a JSON object")


def check_given(given: dict, flags: dict) -> None:
    """The value rules for the options a user typed, before any file is touched: `given` maps
    config keys ("train.save_every") to values, `flags` names the option each came from."""
    for key, v in given.items():
        rule = RULES.get(key)
        if rule is not None and not rule[0](v):
            raise DfeditError(f"{flags[key]} must be {rule_text(rule, v)}, got {v!r}")


def check_options(mc: ModelConfig, dc: DiffusionConfig, tc: TrainConfig, dac: DataConfig,
                  flag: Callable[[str, str], str], checked=()) -> None:
    """The same rules for the configs of a run about to start, and how they go together:
    `flag(section, field)` names the option ("--save-every") or the config key a bad value came
    from; `checked`: keys whose values check_given has passed already."""
    for name, obj in (("model", mc), ("diffusion", dc), ("train", tc), ("data", dac)):
        for f in fields(obj):
            key = f"{name}.{f.name}"
            if key in checked:
                continue
            v = getattr(obj, f.name)
            kind = KINDS.get(key) or _kind_of(_default(f))
            where = flag(name, f.name)
            if not _KIND_CHECK[kind](v):
                raise DfeditError(f"{where} must be {_KIND_NAME.get(kind, 'a ' + kind)}, got {_show(v)}")
            rule = RULES.get(key)
            if rule is not None and not rule[0](v):
                raise DfeditError(f"{where} must be {rule_text(rule, v)}, got {_show(v)}")
    if tc.sample_stride > dc.num_train_timesteps:
        raise DfeditError(f"{flag('train', 'sample_stride')} must be at most {dc.num_train_timesteps}")
    why = size_problem(mc)
    if why:
        raise DfeditError(f"the model {why}")


def size_problem(mc: ModelConfig) -> str | None:
    """Why a model config is too large to build (estimated, nothing allocated), or None."""
    from .config import MAX_ACTIVATION_BYTES, MAX_PARAMETERS, size_estimate

    params, acts = size_estimate(mc)
    if params > MAX_PARAMETERS:
        return f"describes at least {params:,} parameters, more than the {MAX_PARAMETERS:,} dfedit builds"
    if acts > MAX_ACTIVATION_BYTES:
        return (f"needs about {acts / 2**30:.0f} GiB of activations per image, more than the "
                f"{MAX_ACTIVATION_BYTES / 2**30:.0f} GiB dfedit allows")
    return None


LATEST_RE = re.compile(r"^checkpoints/step-(\d{8,})$")


def latest_problem(obj) -> str | None:
    """Why a parsed latest.json cannot be used, or None."""
    if not isinstance(obj, dict):
        return f"holds {type(obj).__name__}, not a JSON object"
    ck = obj.get("checkpoint")
    if not isinstance(ck, str):
        return "has no 'checkpoint' string"
    if not LATEST_RE.match(ck):
        return f"names {ck!r}, not checkpoints/step-NNNNNNNN"
    if "step" in obj and (not _int(obj["step"]) or obj["step"] != int(LATEST_RE.match(ck)[1])):
        return f"says step {_show(obj['step'])} for {ck}"
    return None
