"""Presets and option aliases of dfedit-train, and the configs an invocation trains with (a preset
plus the options given, or the checkpoint's when a run resumes). The config dataclasses written, as
JSON, into every checkpoint are the checkpoint format, which dfedit reads: they live in
dfedit.emoji.config.
"""

from __future__ import annotations

import copy
from dataclasses import fields, replace
from pathlib import Path

from dfedit.emoji.config import DataConfig, DiffusionConfig, ModelConfig, TrainConfig, from_dict  # noqa: F401 (re-exported)
from dfedit.errors import DfeditError

from .checkpoint import find_resumable


PRESETS: dict[str, dict] = {
    # Seconds on one CPU thread: tests and smoke runs.
    "tiny": dict(
        model=dict(image_size=16, channels=(16, 32), num_res_blocks=1, self_attn=(False, True),
                   cross_attn=(False, True), head_dim=16),
        train=dict(epochs=2, batch_size=8, lr=1e-3, warmup_steps=5, ema_decay=0.9, save_every=1,
                   sample_every=1, grid_prompts=4, sample_stride=100, mixed_precision="no"),
    ),
    # 32 px on a 2-core CPU, the recipe of the shipped `--model emoji` (docs/train.md: it won an
    # ablation at equal CPU time): a 2x2 pixel-unshuffle stem so the top level runs at 16 px, which buys 4x
    # the parameters of a plain 32/64/128 net (19.8 M) for 0.8x its step time; attention at 8 and 4 px,
    # cross-attention at every level; the pooled caption in the time embedding, so the text reaches
    # every ResNet block (each of these two levers alone took the top-5 ratio from 0.30 to 0.53-0.60).
    "cpu": dict(
        model=dict(image_size=32, channels=(64, 128, 256), num_res_blocks=2, self_attn=(False, True, True),
                   cross_attn=(True, True, True), head_dim=32, pooled_text=True, patch=2),
        # v-prediction: after ~1.3k steps on real emoji an eps model's samples from pure noise were
        # frame-filling textures while a v model already drew white-background blobs (docs/train.md);
        # at high noise eps errors are amplified by 1/sqrt(abar) into x0, v errors are not.
        diffusion=dict(prediction_type="v_prediction"),
        # bf16 autocast: 1.3-2.6x on CPUs with native bf16 (the trainer falls back to fp32 on others).
        # A constant rate after warm-up: `--epochs` extends a run exactly, in this session or the next;
        # the shipped model is this preset run on to 320 epochs over the base emoji (--base-only).
        train=dict(epochs=40, batch_size=32, lr=5e-4, lr_schedule="constant", warmup_steps=200, ema_decay=0.999,
                   save_every=5, sample_every=5, mixed_precision="bf16"),
    ),
    # The full 64 px recipe for one GPU: levels 64/32/16/8, attention at 16 and 8.
    "gpu": dict(
        model=dict(image_size=64, channels=(64, 128, 192, 256), num_res_blocks=2,
                   self_attn=(False, False, True, True), cross_attn=(False, True, True, True), head_dim=32),
        train=dict(epochs=500, batch_size=128, lr=3e-4, warmup_steps=500, ema_decay=0.9995, save_every=50,
                   sample_every=50, mixed_precision="bf16"),
    ),
}


def preset(name: str) -> tuple[ModelConfig, DiffusionConfig, TrainConfig]:
    if name not in PRESETS:
        raise DfeditError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    return (from_dict(ModelConfig, p.get("model", {})), from_dict(DiffusionConfig, p.get("diffusion", {})),
            from_dict(TrainConfig, p.get("train", {})))


def data_config(saved: dict) -> DataConfig:
    """A checkpoint's "data" section as a DataConfig: it also holds what the run measured (channel
    statistics, sizes), which are not options."""
    return from_dict(DataConfig, {k: v for k, v in saved.items() if k in DataConfig.__dataclass_fields__})


SCHEDULE_ALIASES = {"cosine": "squaredcos_cap_v2", "linear": "linear", "sigmoid": "sigmoid",
                    "squaredcos_cap_v2": "squaredcos_cap_v2"}


# Options that may change when a run is resumed; anything else must match the checkpoint.
RESUMABLE = {"epochs", "save_every", "sample_every", "keep_checkpoints", "compile", "grid_prompts"}


def resolve_configs(out: Path, preset_cfgs: tuple, given: dict, log=None, preset_name: str | None = None,
                    fresh: bool = False, repair: bool = True
                    ) -> tuple[ModelConfig, DiffusionConfig, TrainConfig, DataConfig, dict | None]:
    """Configs for this invocation: the checkpoint's when resuming (plus allowed changes), else preset+given.

    `given` maps "section.field" to values the user typed explicitly. The checkpoint resumed from
    is the newest complete, finite one (checkpoint.find_resumable, which logs why when it is not
    the one latest.json names); its directory is in saved["_checkpoint_dir"]. `preset_name`: the
    --preset typed explicitly, which must then describe the same model as the run's. `fresh`:
    start from step 0 (--restart); `repair`: let the finder repair the run directory (only the
    process that holds its lock does).
    """
    found = None
    if out.is_dir() and not fresh:
        found = find_resumable(out, repair=repair, **({"log": log} if log else {}))
    if found is None:
        mc, dc, tc = (copy.deepcopy(c) for c in preset_cfgs)
        dac = DataConfig()
        sections = {"model": mc, "diffusion": dc, "train": tc, "data": dac}
        for key, v in given.items():
            sec, f = key.split(".")
            sections[sec] = replace(sections[sec], **{f: v})
        mc, dc, tc, dac = sections["model"], sections["diffusion"], sections["train"], sections["data"]
        return mc, dc, tc, dac, None
    saved = {**found.config, "_checkpoint_dir": str(found.path)}
    mc, dc = from_dict(ModelConfig, saved["model"]), from_dict(DiffusionConfig, saved["diffusion"])
    tc = from_dict(TrainConfig, saved["train"])
    dac = data_config(saved["data"])
    sections = {"model": mc, "diffusion": dc, "train": tc, "data": dac}
    for key, v in given.items():
        sec, f = key.split(".")
        old = getattr(sections[sec], f)
        if f in RESUMABLE:
            sections[sec] = replace(sections[sec], **{f: v})
        elif (tuple(old) if isinstance(old, (list, tuple)) else old) != (tuple(v) if isinstance(v, (list, tuple)) else v):
            raise DfeditError(f"{out} holds a run with {f}={old!r}; resume it without --{f.replace('_', '-')} "
                              f"or train into a new --out")
    if preset_name is not None:
        _check_preset(out, preset_name, preset_cfgs, sections, given)
    tc = sections["train"]
    if tc.epochs < saved["state"]["epoch"]:
        raise DfeditError(f"{out} is already at epoch {saved['state']['epoch']}; --epochs {tc.epochs} is smaller")
    return mc, dc, tc, dac, saved


def _check_preset(out: Path, name: str, preset_cfgs: tuple, sections: dict, given: dict) -> None:
    """Resuming with an explicit --preset: it must describe the run's model and diffusion (the
    fields the user did not set explicitly), as any other run-defining option must match."""
    for sec, preset_obj in (("model", preset_cfgs[0]), ("diffusion", preset_cfgs[1])):
        for f in fields(preset_obj):
            if f.name == "text_dim" or f"{sec}.{f.name}" in given:
                continue
            want, have = getattr(preset_obj, f.name), getattr(sections[sec], f.name)
            norm = (lambda v: tuple(v) if isinstance(v, (list, tuple)) else v)
            if norm(want) != norm(have):
                raise DfeditError(f"{out} holds a run with {f.name}={have!r}, --preset {name} has {want!r}; resume "
                                  f"it without --preset (or with the preset it was started with), or train into "
                                  f"a new --out")
