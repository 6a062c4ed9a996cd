"""Presets and the config dataclasses that are written, as JSON, into every checkpoint.

Everything needed to rebuild a model and continue a run is here, so a checkpoint directory is
self-describing: `load_denoiser` needs nothing but the directory.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dfedit.errors import DfeditError


@dataclass
class ModelConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (64, 128, 192, 256)  # one width per resolution level
    # ResNet blocks per encoder level (the decoder gets one more, for the stem skip): one number for
    # every level, or one per level, so capacity can sit at the cheap low resolutions.
    num_res_blocks: int | tuple[int, ...] = 2
    self_attn: tuple[bool, ...] = (False, False, True, True)  # per level; the middle block always attends
    cross_attn: tuple[bool, ...] = (False, True, True, True)
    head_dim: int = 32  # attention heads = width // head_dim
    time_dim: int = 0  # 0: 4 * channels[0]
    text_dim: int = 384  # width of the text encoder's token states
    dropout: float = 0.0
    # The caption's masked-mean token state, projected into the time embedding so it reaches every
    # ResNet block's scale/shift (GLIDE, Imagen), in addition to cross-attention on the tokens.
    pooled_text: bool = False
    # Pixels folded into channels before the first level (pixel-unshuffle) and unfolded after the
    # last: patch 2 runs a 32 px model's top level at 16 px, where a conv costs a quarter as much.
    patch: int = 1

    def res_blocks(self) -> tuple[int, ...]:
        """ResNet blocks per encoder level."""
        nrb = self.num_res_blocks
        return tuple(nrb) if isinstance(nrb, (list, tuple)) else (int(nrb),) * len(self.channels)

    def validate(self) -> None:
        n = len(self.channels)
        if n < 1 or len(self.self_attn) != n or len(self.cross_attn) != n:
            raise DfeditError("the model needs one width and one self/cross-attention flag per level")
        if len(self.res_blocks()) != n or min(self.res_blocks()) < 1:
            raise DfeditError("the model needs at least one ResNet block per level, given once or once per level")
        if self.patch < 1 or self.image_size % (self.patch * 2 ** (n - 1)):
            raise DfeditError(f"image size {self.image_size} is not divisible by patch {self.patch} x 2^{n - 1} "
                              f"for {n} levels")
        for c in self.channels:
            if c % 8 or c % self.head_dim:
                raise DfeditError(f"width {c} must be a multiple of 8 and of the head size {self.head_dim}")


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine; "linear" and "sigmoid" too; "flow" goes with flow_prediction
    prediction_type: str = "epsilon"  # "v_prediction", "sample" (x0) and "flow_prediction" (flow matching) too
    min_snr_gamma: float = 0.0  # 0: plain MSE on the target; >0: min-SNR-gamma weighting
    cfg_dropout: float = 0.1  # probability of training a sample with the null (empty-prompt) conditioning

    def scheduler_config(self) -> dict:
        """What `dfedit.schedule.NoiseSchedule.from_config` reads: the schedule this run's objective
        implies (dfedit_train.diffusion.Objective.scheduler_config), a diffusers DDPMScheduler config
        or, for the flow objective, a flow-matching one."""
        from .diffusion import Objective

        return Objective.from_config(self).scheduler_config()


@dataclass
class TrainConfig:
    epochs: int = 500
    batch_size: int = 64  # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 2e-4
    min_lr: float = 2e-6
    warmup_steps: int = 500
    # "cosine": warm-up, then cosine decay to min_lr at the last epoch (a longer --epochs on resume
    # stretches the decay). "constant": warm-up, then lr for ever, so a run can be extended with a
    # larger --epochs, in this session or the next, exactly as if it had been asked for from the start.
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-4  # only on matrices/kernels (ndim > 1), as the Flax trainer did
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.9995
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    flip_prob: float = 0.0  # horizontal flips, only for captions without left/right/text-like content
    seed: int = 0
    save_every: int = 10  # epochs between checkpoints (and always at the end)
    sample_every: int = 10  # epochs between validation grids (0: never)
    keep_checkpoints: int = 3
    grid_prompts: int = 8
    sample_stride: int = 20  # DDPM stride of the validation grid (1000 / 20 = 50 steps)
    guidance: float = 3.0
    compile: bool = False


@dataclass
class DataConfig:
    source: str = "npm"  # "npm" (default, the emoji-datasource-<vendor> package) or a path
    vendor: str = "google"
    base_only: bool = False  # drop skin-tone variants
    val_fraction: float = 0.1
    text_encoder: str = "minilm"  # "minilm" = the pinned offline MiniLM; else any HF id or path
    subset: int = 0  # >0: train on this many base emoji of the training split only (for short ablations)
    max_length: int = 24


PRESETS: dict[str, dict] = {
    # Seconds on one CPU thread: tests and smoke runs.
    "tiny": dict(
        model=dict(image_size=16, channels=(16, 32), num_res_blocks=1, self_attn=(False, True),
                   cross_attn=(False, True), head_dim=16),
        train=dict(epochs=2, batch_size=8, lr=1e-3, warmup_steps=5, ema_decay=0.9, save_every=1,
                   sample_every=1, grid_prompts=4, sample_stride=100, mixed_precision="no"),
    ),
    # 32 px on a 2-core CPU: levels 32/16/8 with attention at 16 and 8.
    "cpu": dict(
        model=dict(image_size=32, channels=(32, 64, 128), num_res_blocks=2, self_attn=(False, True, True),
                   cross_attn=(False, True, True), head_dim=32),
        # v-prediction: after ~1.3k steps on real emoji an eps model's samples from pure noise were
        # frame-filling textures while a v model already drew white-background blobs (docs/train.md);
        # at high noise eps errors are amplified by 1/sqrt(abar) into x0, v errors are not.
        diffusion=dict(prediction_type="v_prediction"),
        # bf16 autocast: 1.3-2.6x on CPUs with native bf16 (pass --mixed-precision no on older ones).
        train=dict(epochs=40, batch_size=32, lr=5e-4, warmup_steps=200, ema_decay=0.999, save_every=5,
                   sample_every=5, mixed_precision="bf16"),
    ),
    # The full 64 px recipe for one GPU: levels 64/32/16/8, attention at 16 and 8.
    "gpu": dict(
        model=dict(image_size=64, channels=(64, 128, 192, 256), num_res_blocks=2,
                   self_attn=(False, False, True, True), cross_attn=(False, True, True, True), head_dim=32),
        train=dict(epochs=500, batch_size=128, lr=3e-4, warmup_steps=500, ema_decay=0.9995, save_every=50,
                   sample_every=50, mixed_precision="bf16"),
    ),
}


def from_dict(cls, d: dict):
    """Dataclass from a JSON dict: lists back to tuples, unknown keys rejected with a clear line."""
    names = {f.name: f for f in fields(cls)}
    out = {}
    for k, v in d.items():
        if k not in names:
            raise DfeditError(f"unknown {cls.__name__} field {k!r} in the checkpoint config")
        out[k] = tuple(v) if isinstance(v, list) else v
    return cls(**out)


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
