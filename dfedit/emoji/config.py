"""The format of a dfedit-train checkpoint's config.json: the dataclasses its sections are read
into, and the noise schedule a `diffusion` section implies.

This is the contract between the trainer (dfedit_train, which writes these files) and the library
(dfedit, which reads them: `--model RUN_DIR`, `--model emoji`); it lives on the library's side so
that dfedit never imports the trainer. dfedit_train.config adds the presets and option aliases.
Everything needed to rebuild a model and continue a run is here, so a checkpoint directory is
self-describing: `dfedit.emoji.checkpoint.load_denoiser` needs nothing but the directory.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import DfeditError, ParamError

# What every config.json says it is: the reader refuses another format, or a newer version of this one.
FORMAT = "dfedit-train/emoji-unet"
FORMAT_VERSION = 1


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
    # Drawing sets the model knows by name (dfedit --style): each gets a learned vector added to the
    # time embedding beside the pooled caption; index 0 is "any style", what the model is given when
    # no style is asked for (training drops the style to it, DiffusionConfig.style_dropout).
    styles: tuple[str, ...] = ()

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


# What a config may ask to be built, checked from arithmetic alone before anything is allocated
# (schema.py): a lower bound on the parameters and the float32 activations of one image.
MAX_PARAMETERS = 1_000_000_000
MAX_ACTIVATION_BYTES = 8 << 30


def size_estimate(m: ModelConfig) -> tuple[int, int]:
    """(at least how many parameters, about how many activation bytes per image) a model config
    implies: every ResNet block has two 3x3 convolutions (encoder: res_blocks per level, decoder one
    more), the U-Net keeps one skip per block, self-attention holds a (tokens x tokens) map per head."""
    params = acts = 0
    side = m.image_size // max(1, m.patch)
    for i, (c, rb) in enumerate(zip(m.channels, m.res_blocks())):
        tokens = (side >> i) ** 2
        params += (2 * rb + 1) * 18 * c * c
        acts += (rb + 1) * c * tokens * 4
        if i < len(m.self_attn) and m.self_attn[i]:
            acts += max(1, c // max(1, m.head_dim)) * tokens * tokens * 4
    return params, acts


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine; "linear" and "sigmoid" too; "flow" goes with flow_prediction
    prediction_type: str = "epsilon"  # what the network predicts: one of dfedit.schedule.PREDICTION_TYPES
    min_snr_gamma: float = 0.0  # 0: plain MSE on the target; >0: min-SNR-gamma weighting
    cfg_dropout: float = 0.1  # probability of training a sample with the null (empty-prompt) conditioning
    style_dropout: float = 0.0  # probability of training a sample with "any style" (models with styles)

    def scheduler_config(self) -> dict:
        """What `dfedit.schedule.NoiseSchedule.from_config` reads: a diffusers DDPMScheduler config,
        or for the flow objective a flow-matching one (its noise levels follow from flow times)."""
        flow = self.prediction_type == "flow_prediction"
        if flow != (self.beta_schedule == "flow"):
            raise ParamError("objective", "flow has its own noise schedule (flow times), and only it: "
                                          "give {objective} flow without {schedule}", also=("schedule",))
        if flow:
            return {
                "_class_name": "FlowMatching",
                "flow_matching": True,
                "flow_time": "s = (t + 1) / (T + 1); x_flow = (1 - s) x0 + s eps = x_t * sqrt((1 - s)^2 + s^2)",
                "num_train_timesteps": self.num_train_timesteps,
                "prediction_type": "flow_prediction",
                "variance_type": "fixed_small",
                "clip_sample": True,
                "clip_sample_range": 1.0,
                "thresholding": False,
            }
        if self.beta_schedule not in ("linear", "squaredcos_cap_v2", "sigmoid", "scaled_linear"):
            raise DfeditError(f"unknown noise schedule {self.beta_schedule!r}: use cosine, linear or sigmoid")
        return {
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "prediction_type": self.prediction_type,
            "variance_type": "fixed_small",
            # The diffusion runs in plain [-1, 1] pixel space (standardisation is input
            # preconditioning, see diffusion.py), so clipping x0 to [-1, 1] is valid.
            "clip_sample": True,
            "clip_sample_range": 1.0,
            "thresholding": False,
        }


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
    # A fresh run may start from another model's EMA weights (a run, an exported model or "emoji"):
    # every tensor whose name and shape match is copied, the rest (e.g. a new style embedding) keep
    # their initialisation. Resuming ignores it: the checkpoint has the weights.
    init_from: str = ""


@dataclass
class DataConfig:
    source: str = "npm"  # "npm" (default, the emoji-datasource-<vendor> package) or a path
    vendor: str = "google"
    base_only: bool = False  # drop skin-tone variants
    val_fraction: float = 0.1
    text_encoder: str = "minilm"  # "minilm" = the pinned offline MiniLM; else any HF id or path
    subset: int = 0  # >0: train on this many base emoji of the training split only (for short ablations)
    max_length: int = 24
    # Several drawing sets of the same emoji (dfedit_train/sets.py), e.g. ("google", "twitter",
    # "fluent"); empty: the one `vendor` set read by `source`.
    sets: tuple[str, ...] = ()
    pair_holdout: float = 0.0  # held-out (emoji, skin tone) and (emoji, set) pairs, by hash (sets only)
    caption_variants: bool = False  # each step draws one of the emoji's captions (name, keywords, ...)
    caption_name_share: float = 0.5  # how often that draw is the CLDR name itself
    tone_share: float = 1.0  # weight of an emoji's tone variants together, against its base image's 1


def from_dict(cls, d: dict):
    """Dataclass from a JSON dict: lists back to tuples, unknown keys rejected with a clear line."""
    names = {f.name: f for f in fields(cls)}
    out = {}
    for k, v in d.items():
        if k not in names:
            raise DfeditError(f"unknown {cls.__name__} field {k!r} in the checkpoint config")
        out[k] = tuple(v) if isinstance(v, list) else v
    return cls(**out)


def schedule_of(cfg: dict):
    """The NoiseSchedule a checkpoint's config.json implies (its `diffusion` section): the one
    reading every loader and the backend share, and the one the trainer's schedule is tested
    against."""
    from ..schedule import NoiseSchedule
    return NoiseSchedule.from_config(from_dict(DiffusionConfig, cfg["diffusion"]).scheduler_config())
