"""The DeepFloyd IF backend: Hub ids and local diffusers-layout directories.

Stage I is the denoiser; T5-XXL sits behind the embedding cache (loaded only for prompts the cache
lacks, freed before any UNet runs); stage II (IF-II) is the `Upscaler`: its own noise schedule for
the low-res conditioning image, which it upsamples, noises and concatenates to x_t. Loading and the
Hub's failure modes are dfedit/models.py's; each model string becomes one `models.Snapshot`, so its
configs and its weights are each looked up once per command.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import (IF_MAX_TOKENS, OFFLINE_HINT, Snapshot, T5PromptEncoder, check_stage2, count_t5_tokens,
                      load_configs, load_if)
from . import ModelInfo

IF_DEFAULT_PROMPT = "a high quality photo"  # the course's prompt for edits of photos
IF_DEFAULT_CFG = 7.0  # IFPipeline's default and the course's scale


class DeepFloyd:
    name = "deepfloyd"
    builtin = True

    def probe(self, model: str) -> ModelInfo:
        """Claims every model string (it is asked last): a Hub id or a diffusers directory, or one
        sentence saying what the string is not."""
        snapshot = Snapshot(model)
        cfg, schedule = load_configs(model, snapshot)
        problem = None
        if cfg.get("class_embed_type") == "timestep":
            problem = f"--model {model} is a stage II (super-resolution) checkpoint: pass a stage I model"
        s = cfg.get("sample_size")
        return ModelInfo(name=model, backend=self, schedule=schedule, sample_size=int(s if isinstance(s, int) else s[0]),
                         default_cfg=IF_DEFAULT_CFG, default_prompt=IF_DEFAULT_PROMPT, upscales=True,
                         prompt_limit=IF_MAX_TOKENS, text_encoder="IF's T5 text encoder", source=snapshot,
                         problem=problem)

    def describe(self, den) -> ModelInfo:
        """The ModelInfo of an IF stage I denoiser built in memory (benchmarks: random full-size
        UNets), for a DFEdit handed that denoiser instead of a model to load."""
        return ModelInfo(name=den.name, backend=self, schedule=den.schedule, sample_size=den.sample_size,
                         default_cfg=IF_DEFAULT_CFG, default_prompt=IF_DEFAULT_PROMPT, upscales=True,
                         prompt_limit=IF_MAX_TOKENS, text_encoder="IF's T5 text encoder", source=Snapshot(den.name))

    def count_tokens(self, info: ModelInfo, prompts: list[str]) -> list[int]:
        root = info.source.root(["unet", "scheduler"], weights=False, also=("text_encoder", "tokenizer"))
        return count_t5_tokens(info.name, prompts, root=root)

    def load(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        return load_if(info.name, device, dtype, offload=offload, cache_dir=cache_dir, quiet=quiet,
                       snapshot=info.source)

    def prompt_encoder(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        return T5PromptEncoder(info.name, device, dtype, cache_dir=cache_dir, offload=offload, quiet=quiet,
                               snapshot=info.source)

    def upscaler(self, info, model, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        # All IF stages use the same T5-XXL: stage II takes stage I's (its cache entries too).
        return IFUpscaler(model, device, dtype, offload=offload, cache_dir=cache_dir, quiet=quiet,
                          text_encoder_model=info.name)


class IFUpscaler:
    """IF stage II behind the `Upscaler` protocol: x_T at the upscaler's size, conditioned on the
    upsampled, noised low-res image, in the draw order of IFSuperResolutionPipeline."""

    def __init__(self, model: str, device, dtype, *, offload=False, cache_dir=None, quiet=True,
                 text_encoder_model: str | None = None, hint: str = OFFLINE_HINT):
        """`text_encoder_model`: the stage I model whose T5 it shares (None: its own T5)."""
        self.model, self.device, self.dtype = model, device, dtype
        self.offload, self.cache_dir, self.quiet, self.hint = offload, cache_dir, quiet, hint
        self.text_encoder_model = text_encoder_model
        self.snapshot = Snapshot(model, flag="--stage2", hint=hint)
        self._checked: set[tuple[int, int]] = set()

    def check(self, steps: int, noise_level: int) -> None:
        if (steps, noise_level) not in self._checked:
            check_stage2(self.model, steps, noise_level, hint=self.hint, snapshot=self.snapshot)
            self._checked.add((steps, noise_level))

    def load(self, prompt_encoder=None):
        shared = prompt_encoder if self.text_encoder_model is not None else None
        return load_if(self.model, self.device, self.dtype, text_encoder_model=self.text_encoder_model,
                       offload=self.offload, cache_dir=self.cache_dir, quiet=self.quiet, upscaler=True,
                       snapshot=self.snapshot, prompt_encoder=shared)

    def timesteps(self, den, steps: int, sampler: str, eta: float) -> list[int]:
        """`steps` model calls in diffusers' leading spacing (50 -> 980, 960, ..., 0)."""
        from ..sampler import check_sampler
        return den.schedule.leading_timesteps(check_sampler(sampler, eta).timesteps_for_calls(steps))

    def condition(self, den, low_res: torch.Tensor, gen: torch.Generator, noise_level: int, conds, uncond):
        from ..sampler import randn
        n, size = low_res.shape[0], den.sample_size
        noise_level = den.noising_schedule.check_t(noise_level, "--noise-level")
        # Draw order as IFSuperResolutionPipeline: x_T first, then the conditioning-image noise.
        x = randn((n, den.channels, size, size), gen, den.device, den.dtype)
        up = F.interpolate(low_res.to(den.device, den.dtype), (size, size), mode="bilinear", align_corners=True)
        levels = torch.tensor([noise_level] * n, device=up.device)
        up = den.noising_schedule.add_noise(up, randn(up.shape, gen, up.device, up.dtype), levels)
        return x, [c.with_image(up, levels) for c in conds], uncond.with_image(up, levels)
