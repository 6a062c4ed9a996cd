"""The DeepFloyd IF backend: Hub ids and local diffusers-layout directories.

Stage I is the denoiser; T5-XXL sits behind the embedding cache (t5.py); stage II (IF-II) is the
`Upscaler`: its own noise schedule for the low-res conditioning image, which it upsamples, noises
and concatenates to x_t.

Each component is loaded on its own (not through IFPipeline) so that T5 is only loaded when a prompt
is missing from the embedding cache, and is freed before any UNet runs. A model string becomes one
hub.Snapshot, so its configs and its weights are each looked up once per command.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..denoiser import Cond
from ..errors import DfeditError
from ..schedule import NoiseSchedule
from . import ModelInfo, model_error
from .hub import Snapshot, quiet_hf_logging, read_json
from .t5 import IF_MAX_TOKENS, T5PromptEncoder, count_t5_tokens

# Every Hub failure points at the model that needs no Hub: the emoji model shipped in the package.
OFFLINE_HINT = "; or use {model} emoji, the built-in emoji model that runs offline on a CPU"


# ---- IF UNets as denoisers --------------------------------------------------------------------

class IFDenoiser:
    """IF stage I (x_t) or stage II (cat[x_t, noised upsampled low-res], class label = noise level)."""

    default_cfg = 7.0  # IFPipeline's default and the course's scale

    def __init__(self, unet, schedule: NoiseSchedule, name: str, prompt_encoder: T5PromptEncoder,
                 device: torch.device, dtype: torch.dtype, noising_schedule: NoiseSchedule | None = None):
        cfg = unet.config
        self.unet, self.schedule, self.name = unet, schedule, name
        self.prompt_encoder, self.device, self.dtype = prompt_encoder, device, dtype
        self.sample_size = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
        self.is_upscaler = cfg.class_embed_type == "timestep" or noising_schedule is not None
        self.channels = int(cfg.in_channels // 2 if self.is_upscaler else cfg.in_channels)
        self.learned_variance = int(cfg.out_channels) == 2 * self.channels
        self.noising_schedule = noising_schedule

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, t: int, cond: Cond):
        inp = x if cond.image is None else torch.cat([x, cond.image], dim=1)
        out = self.unet(inp, t, encoder_hidden_states=cond.text, class_labels=cond.noise_level,
                        return_dict=False)[0]
        if self.learned_variance:
            eps, var = out.split(self.channels, dim=1)
        else:
            eps, var = out, None
        return self.schedule.model_output_to_eps(eps, x, t), var


def configure_unet(unet, device: torch.device, channels_last: bool | None = None):
    """The fast path for an IF UNet (benchmarks/bench_sampler.py and bench_if.py measure it).

    - channels_last weights (None: on CUDA only): cuDNN's fp16 tensor-core convolutions want NHWC
      and activations follow the weights' layout. On CPU three runs of the tiny IF UNet measured
      0.98-1.02x, no gain, so CPU keeps diffusers' contiguous layout (and bit-for-bit parity).
    - attention: diffusers picks its SDPA processors (`AttnAddedKVProcessor2_0` for IF) when torch
      has scaled_dot_product_attention; we refuse a slower fallback rather than run on it silently.
    """
    slow = sorted({type(p).__name__ for p in unet.attn_processors.values()} - SDPA_PROCESSORS)
    if slow:
        raise DfeditError(f"the UNet uses attention processors {', '.join(slow)}, not torch's "
                          "scaled_dot_product_attention: upgrade torch/diffusers")
    if channels_last if channels_last is not None else device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    return unet


SDPA_PROCESSORS = {"AttnProcessor2_0", "AttnAddedKVProcessor2_0"}


def load_if(model: str, device: torch.device, dtype: torch.dtype, *, text_encoder_model: str | None = None,
            offload: bool = False, cache_dir=None, quiet: bool = True, upscaler: bool = False,
            snapshot: Snapshot | None = None, prompt_encoder: T5PromptEncoder | None = None) -> IFDenoiser:
    """Stage I (upscaler=False) or stage II from a Hub id or a local directory.

    `text_encoder_model` names where T5 comes from (stage II gets stage I's, see below), or
    `prompt_encoder` is that encoder itself; `snapshot`: the model's resolved directories.
    """
    from diffusers import UNet2DConditionModel

    fp16 = dtype == torch.float16
    comps = ["unet", "scheduler"] + (["image_noising_scheduler"] if upscaler else [])
    if snapshot is None:
        snapshot = Snapshot(model, param="stage2" if upscaler else "model", hint=OFFLINE_HINT)
    own_t5 = prompt_encoder is None and text_encoder_model in (None, model)
    # A model that is its own T5 source fetches T5 in the same look-up as its UNet.
    root = snapshot.root(comps, fp16=fp16, also=("text_encoder", "tokenizer") if own_t5 else ())
    unet_cfg = read_json(root / "unet" / "config.json", "unet/config.json")
    if upscaler != (unet_cfg.get("class_embed_type") == "timestep"):
        want = "a stage II (super-resolution)" if upscaler else "a stage I"
        raise DfeditError(f"{model} is not {want} IF checkpoint (its UNet config says otherwise)")
    sched_cfg = read_json(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    schedule = NoiseSchedule.from_config(sched_cfg)
    noising = None
    if upscaler:
        ncfg_path = root / "image_noising_scheduler" / "scheduler_config.json"
        noising = NoiseSchedule.from_config(read_json(ncfg_path, "image_noising_scheduler/scheduler_config.json"))
    quiet_hf_logging()
    variant = "fp16" if fp16 and list((root / "unet").glob("*fp16*.safetensors")) else None
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", dtype=dtype, variant=variant,
                                                    use_safetensors=True)
    except (OSError, ValueError) as e:
        raise DfeditError(f"could not load the UNet from {root}/unet: {str(e).splitlines()[0]}") from None
    unet = configure_unet(unet.eval().requires_grad_(False), device)
    if offload and device.type != "cpu":
        from accelerate import cpu_offload
        cpu_offload(unet, execution_device=device)
    else:
        unet.to(device)
    # All IF stages use the same T5-XXL: prefer the one named by the caller (stage I's), so both
    # stages share cache entries and IF-II's copy of T5 is never downloaded or loaded.
    if prompt_encoder is None:
        te_model = text_encoder_model or model
        t5_snapshot = snapshot if te_model == model else Snapshot(te_model, hint=OFFLINE_HINT)
        prompt_encoder = T5PromptEncoder(t5_snapshot, device, dtype, cache_dir=cache_dir, offload=offload, quiet=quiet)
    return IFDenoiser(unet, schedule, model, prompt_encoder, device, dtype, noising_schedule=noising)


def check_stage2(snapshot: Snapshot, steps: int, noise_level: int) -> None:
    """Validate stage II from its configs alone, so a bad --stage2 / --noise-level / --stage2-steps
    is reported before stage I spends minutes on a GPU."""
    root = snapshot.root(["unet", "scheduler", "image_noising_scheduler"], weights=False)
    unet_cfg = read_json(root / "unet" / "config.json", "unet/config.json")
    if unet_cfg.get("class_embed_type") != "timestep":
        raise model_error("stage2", f"{snapshot.model} is not a stage II (super-resolution) IF checkpoint")
    sched = read_json(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    NoiseSchedule.from_config(sched).leading_timesteps(steps)
    noising = read_json(root / "image_noising_scheduler" / "scheduler_config.json",
                        "image_noising_scheduler/scheduler_config.json")
    NoiseSchedule.from_config(noising).check_t(noise_level, "noise_level")


def load_configs(snapshot: Snapshot) -> tuple[dict, NoiseSchedule]:
    """UNet config and schedule only (a few KB, no weights): for commands that never run the UNet.
    The tokenizer's and T5's configs come in the same look-up."""
    root = snapshot.root(["unet", "scheduler"], weights=False, also=("text_encoder", "tokenizer"))
    unet_cfg = read_json(root / "unet" / "config.json", "unet/config.json")
    sched = read_json(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    return unet_cfg, NoiseSchedule.from_config(sched)


# ---- the backend ---------------------------------------------------------------------------------

IF_DEFAULT_PROMPT = "a high quality photo"  # the course's prompt for edits of photos
IF_DEFAULT_CFG = 7.0  # IFPipeline's default and the course's scale


class DeepFloyd:
    """Claims every model string no other backend claimed (it is asked last): a Hub id or a
    diffusers directory. A ModelInfo's source is the model's `Snapshot`."""

    name = "deepfloyd"
    builtin = True
    summary = ("a Hub id such as DeepFloyd/IF-I-XL-v1.0", "a local diffusers IF directory")

    def _info(self, name: str, schedule: NoiseSchedule, sample_size: int, snapshot: Snapshot,
              is_stage2: bool = False) -> ModelInfo[Snapshot]:
        return ModelInfo(name=name, backend=self, schedule=schedule, sample_size=sample_size,
                         default_cfg=IF_DEFAULT_CFG, default_prompt=IF_DEFAULT_PROMPT, upscales=True,
                         prompt_limit=IF_MAX_TOKENS, text_encoder="IF's T5 text encoder", is_stage2=is_stage2,
                         source=snapshot)

    def probe(self, model: str) -> ModelInfo[Snapshot]:
        """The ModelInfo of a Hub id or a diffusers directory, or one sentence saying what the
        string is not."""
        snapshot = Snapshot(model, hint=OFFLINE_HINT)
        cfg, schedule = load_configs(snapshot)
        s = cfg.get("sample_size")
        return self._info(model, schedule, int(s if isinstance(s, int) else s[0]), snapshot,
                          is_stage2=cfg.get("class_embed_type") == "timestep")

    def describe(self, den) -> ModelInfo[Snapshot]:
        """The ModelInfo of an IF stage I denoiser built in memory (benchmarks: random full-size
        UNets), for a DFEdit handed that denoiser instead of a model to load."""
        return self._info(den.name, den.schedule, den.sample_size, Snapshot(den.name, hint=OFFLINE_HINT))

    def count_tokens(self, info: ModelInfo[Snapshot], prompts: list[str]) -> list[int]:
        root = info.source.root(["unet", "scheduler"], weights=False, also=("text_encoder", "tokenizer"))
        return count_t5_tokens(root, prompts)

    def load(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        return load_if(info.name, device, dtype, offload=offload, cache_dir=cache_dir, quiet=quiet,
                       snapshot=info.source)

    def prompt_encoder(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        return T5PromptEncoder(info.source, device, dtype, cache_dir=cache_dir, offload=offload, quiet=quiet)

    def upscaler(self, info, model, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        # All IF stages use the same T5-XXL: stage II takes stage I's (its cache entries too).
        return IFUpscaler(model, device, dtype, offload=offload, cache_dir=cache_dir, quiet=quiet,
                          text_encoder_model=info.name)

    def check_upscale(self, info, stage2: str, steps: int, noise_level: int) -> None:
        check_stage2(Snapshot(stage2, param="stage2", hint=OFFLINE_HINT), steps, noise_level)

    def standalone_upscaler(self, model, device, dtype, *, offload=False, cache_dir=None, quiet=True,
                            hint=OFFLINE_HINT):
        """IF-II with its own T5, for stage I models of another family (emoji models)."""
        return IFUpscaler(model, device, dtype, offload=offload, cache_dir=cache_dir, quiet=quiet, hint=hint)


class IFUpscaler:
    """IF stage II behind the `Upscaler` protocol: x_T at the upscaler's size, conditioned on the
    upsampled, noised low-res image, in the draw order of IFSuperResolutionPipeline."""

    def __init__(self, model: str, device, dtype, *, offload=False, cache_dir=None, quiet=True,
                 text_encoder_model: str | None = None, hint: str = OFFLINE_HINT):
        """`text_encoder_model`: the stage I model whose T5 it shares (None: its own T5)."""
        self.model, self.device, self.dtype = model, device, dtype
        self.offload, self.cache_dir, self.quiet = offload, cache_dir, quiet
        self.text_encoder_model = text_encoder_model
        self.snapshot = Snapshot(model, param="stage2", hint=hint)
        self._checked: set[tuple[int, int]] = set()

    def check(self, steps: int, noise_level: int) -> None:
        if (steps, noise_level) not in self._checked:
            check_stage2(self.snapshot, steps, noise_level)
            self._checked.add((steps, noise_level))
    def load(self, prompt_encoder=None):
        shared = prompt_encoder if self.text_encoder_model is not None else None
        return load_if(self.model, self.device, self.dtype, text_encoder_model=self.text_encoder_model,
                       offload=self.offload, cache_dir=self.cache_dir, quiet=self.quiet, upscaler=True,
                       snapshot=self.snapshot, prompt_encoder=shared)

    def timesteps(self, den, steps: int, sampler: str, eta: float) -> list[int]:
        """`steps` model calls in diffusers' leading spacing (50 -> 980, 960, ..., 0)."""
        from ..samplers import check_sampler
        return den.schedule.leading_timesteps(check_sampler(sampler, eta).timesteps_for_calls(steps))

    def condition(self, den, low_res: torch.Tensor, gen: torch.Generator, noise_level: int, conds, uncond):
        from ..sampler import randn
        n, size = low_res.shape[0], den.sample_size
        noise_level = den.noising_schedule.check_t(noise_level, "noise_level")
        # Draw order as IFSuperResolutionPipeline: x_T first, then the conditioning-image noise.
        x = randn((n, den.channels, size, size), gen, den.device, den.dtype)
        up = F.interpolate(low_res.to(den.device, den.dtype), (size, size), mode="bilinear", align_corners=True)
        levels = torch.tensor([noise_level] * n, device=up.device)
        up = den.noising_schedule.add_noise(up, randn(up.shape, gen, up.device, up.dtype), levels)
        return x, [c.with_image(up, levels) for c in conds], uncond.with_image(up, levels)
