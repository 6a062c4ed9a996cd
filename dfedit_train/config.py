"""Presets and option aliases of dfedit-train. The config dataclasses written, as JSON, into every
checkpoint are the checkpoint format, which dfedit reads: they live in dfedit.emoji.config.
"""

from __future__ import annotations

from dfedit.emoji.config import DataConfig, DiffusionConfig, ModelConfig, TrainConfig, from_dict  # noqa: F401 (re-exported)
from dfedit.errors import DfeditError


PRESETS: dict[str, dict] = {
    # Seconds on one CPU thread: tests and smoke runs.
    "tiny": dict(
        model=dict(image_size=16, channels=(16, 32), num_res_blocks=1, self_attn=(False, True),
                   cross_attn=(False, True), head_dim=16),
        train=dict(epochs=2, batch_size=8, lr=1e-3, warmup_steps=5, ema_decay=0.9, save_every=1,
                   sample_every=1, grid_prompts=4, sample_stride=100, mixed_precision="no"),
    ),
    # 32 px on a 2-core CPU, the recipe of the shipped `--model emoji` (docs/train.md, issue 10's
    # equal-CPU ablation): a 2x2 pixel-unshuffle stem so the top level runs at 16 px, which buys 4x
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
OBJECTIVE_ALIASES = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction",
                     "x0": "sample", "sample": "sample", "flow": "flow_prediction", "flow_prediction": "flow_prediction"}
