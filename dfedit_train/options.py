"""`dfedit-train emoji`'s options -> config keys, from one table.

An option named as a field of the config dataclasses sets that field (`--batch-size` sets
train.batch_size, `--self-attn` model.self_attn); RENAMED lists the few whose name is not a field's.
What an option's value must be is the schema's (dfedit.emoji.schema.RULES), checked once, there;
here it is only parsed (comma lists, aliases) into the field's type.
"""

from __future__ import annotations

from dataclasses import fields

from dfedit.emoji.schema import SECTIONS
from dfedit.errors import DfeditError

from .config import PRESETS, SCHEDULE_ALIASES
from .diffusion import OBJECTIVES, objective_choices, objective_named

# Options whose name is not the config field they set.
RENAMED = {"data": "data.source", "schedule": "diffusion.beta_schedule", "objective": "diffusion.prediction_type",
           "min_snr": "diffusion.min_snr_gamma"}
# Config fields some options set only with --sets, each with its default there.
SETS_ONLY = {"caption_variants": True, "pair_holdout": 0.1, "tone_share": None, "style_dropout": 0.3}


def _field_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    for sec, cls in SECTIONS.items():
        for f in fields(cls):
            assert f.name not in keys, f"two sections have a field {f.name!r}: an option could not name one"
            keys[f.name] = f"{sec}.{f.name}"
    return keys


OPTION_KEYS = {**_field_keys(), **RENAMED}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _ints(s: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise DfeditError(f"{what} must be comma-separated integers, got {s!r}") from None


def _bools(s: str, what: str) -> tuple[bool, ...]:
    vals = _ints(s, what)
    if any(v not in (0, 1) for v in vals):
        raise DfeditError(f"{what} must be comma-separated 0/1 flags, got {s!r}")
    return tuple(bool(v) for v in vals)


def _schedule(s: str):
    if s not in SCHEDULE_ALIASES:
        raise DfeditError(f"--schedule must be cosine, linear or sigmoid, got {s!r}")
    return SCHEDULE_ALIASES[s]


def _objective(s: str):
    obj = objective_named(s)
    if obj is None:
        raise DfeditError(f"--objective must be {objective_choices(notes=False)}, got {s!r}")
    return obj.prediction_type


def _res_blocks(s: str):
    nrb = _ints(s, "--num-res-blocks")
    return nrb[0] if len(nrb) == 1 else nrb


# How an option typed as text becomes its field's value (the rest arrive typed from typer).
PARSE = {"channels": lambda s: _ints(s, "--channels"), "num_res_blocks": _res_blocks,
         "self_attn": lambda s: _bools(s, "--self-attn"), "cross_attn": lambda s: _bools(s, "--cross-attn"),
         "schedule": _schedule, "objective": _objective}


def given_options(opts: dict) -> tuple[dict, dict]:
    """(config key -> value, config key -> the option it came from) of the options typed: `opts`
    maps every parameter of `dfedit-train emoji` to its value, None when it was not given."""
    from .sets import SETS

    opts = dict(opts)
    sets, styles = opts.pop("sets"), opts.pop("styles")
    given, flags = {}, {}

    def put(key, value, option):
        given[key], flags[key] = value, flag(option)

    if sets is not None:
        names = tuple(x.strip() for x in sets.split(",") if x.strip())
        bad = [x for x in names if x not in SETS]
        if not names or bad:
            raise DfeditError(f"--sets takes drawing sets from {', '.join(SETS)}, got {sets!r}")
        if opts["data"] is not None or opts["vendor"] is not None:
            raise DfeditError("--sets fetches its own drawing sets: leave out --data and --vendor")
        put("data.sets", names, "sets")
        if styles is None or styles:
            put("model.styles", names, "styles")
        else:
            opts["style_dropout"] = None  # no styles: nothing to drop
        for name, default in SETS_ONLY.items():
            if opts[name] is None:
                opts[name] = default
    else:
        for name, v in (("styles", styles), *((n, opts[n]) for n in SETS_ONLY)):
            if v is not None:
                raise DfeditError(f"{flag(name)} applies to --sets only")
    for name, v in opts.items():
        if v is not None and name in OPTION_KEYS:
            put(OPTION_KEYS[name], PARSE[name](v) if name in PARSE else v, name)
    own = OBJECTIVES[given["diffusion.prediction_type"]].own_schedule if "diffusion.prediction_type" in given else None
    if own is not None:
        if opts["schedule"] is not None:
            raise DfeditError(f"--objective {opts['objective']} has its own noise schedule: drop --schedule")
        put("diffusion.beta_schedule", own, "objective")
    return given, flags


def schedule_name(beta_schedule: str) -> str:
    """What --schedule calls a beta schedule (cosine for squaredcos_cap_v2)."""
    return next((k for k, v in SCHEDULE_ALIASES.items() if v == beta_schedule), beta_schedule)


def objective_help() -> str:
    """--objective's help: the registered objectives, and each preset's."""
    return (f"what the network predicts: {objective_choices()} (" +
            preset_defaults("diffusion", "prediction_type", lambda pt: OBJECTIVES[pt].alias) + ")")


def preset_defaults(section: str, field: str, fmt=str) -> str:
    """'default: the preset's: tiny 2, cpu 40, gpu 500': what --help shows for preset-set options."""
    base = SECTIONS[section]()
    vals = [f"{name} {fmt(p.get(section, {}).get(field, getattr(base, field)))}" for name, p in PRESETS.items()]
    return f"default: the preset's: {', '.join(vals)}"
