"""The Python API: what every CLI command calls, returning tensors and PIL images.

    from dfedit import DFEdit
    df = DFEdit(model="DeepFloyd/IF-I-XL-v1.0")
    result = df.sample("an oil painting of a snowy village", seed=777)
    result.pil()[0].save("village.png")

The data path is: prompts -> encode (cached) -> start state + timesteps + eps_fn -> denoise_loop ->
optional stage II (same loop, upscaler denoiser) -> images. Models load lazily; with
keep_loaded=False (what the CLI uses) each one is freed as soon as its stage is done, so T5, stage I
and stage II never share the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from .denoiser import Cond, Denoiser
from .errors import DfeditError
from .filters import gaussian_blur
from .images import to_pil
from .models import DEFAULT_STAGE1, DEFAULT_STAGE2, free_memory, load_if, pick_device, pick_dtype
from .progress import progress_bar
from .sampler import StepCallback, cfg as cfg_fn, denoise_loop, randn


def make_generator(seed: int) -> torch.Generator:
    """All draws come from one CPU generator in diffusers' order, whatever the device."""
    return torch.Generator("cpu").manual_seed(int(seed))


@dataclass
class Result:
    images: torch.Tensor  # final images in [-1, 1], (N, 3, H, W)
    stage1: torch.Tensor  # stage I output (equal to images without stage II)
    meta: dict = field(default_factory=dict)

    def pil(self) -> list[Image.Image]:
        return to_pil(self.images)


class DFEdit:
    def __init__(self, model: str = DEFAULT_STAGE1, stage2: str = DEFAULT_STAGE2, device: str = "auto",
                 dtype: str = "auto", offload: bool = False, cache_dir: str | None = None,
                 quiet: bool = False, keep_loaded: bool = True):
        self.model, self.stage2_model = model, stage2
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.offload, self.cache_dir, self.quiet, self.keep_loaded = offload, cache_dir, quiet, keep_loaded
        self._s1: Denoiser | None = None
        self._s2: Denoiser | None = None

    # ---- models ------------------------------------------------------------------------------
    def stage1(self) -> Denoiser:
        if self._s1 is None:
            self._s1 = load_denoiser(self.model, self.device, self.dtype, offload=self.offload,
                                     cache_dir=self.cache_dir, quiet=self.quiet)
        return self._s1

    def stage2(self) -> Denoiser:
        if self._s2 is None:
            self._s2 = load_if(self.stage2_model, self.device, self.dtype, text_encoder_model=self.model,
                               offload=self.offload, cache_dir=self.cache_dir, quiet=self.quiet, upscaler=True)
        return self._s2

    def _done_with(self, which: str) -> None:
        if not self.keep_loaded:
            setattr(self, which, None)
            free_memory()

    def encode(self, denoiser: Denoiser, prompts: list[str]) -> Cond:
        return denoiser.prompt_encoder.encode(prompts).to(denoiser.device, denoiser.dtype)

    def embed(self, prompts: list[str]) -> None:
        """Fill the embedding cache (no UNet weights are loaded for this)."""
        self._text_encoder().encode(list(prompts))

    def _text_encoder(self):
        from .models import T5PromptEncoder
        if self._s1 is not None:
            return self._s1.prompt_encoder
        emoji = _emoji_backend(self.model)
        if emoji is not None:
            return emoji.load_denoiser(self.model, self.device, self.dtype).prompt_encoder
        return T5PromptEncoder(self.model, self.device, self.dtype, cache_dir=self.cache_dir,
                               offload=self.offload, quiet=self.quiet)

    # ---- the building blocks every edit shares ------------------------------------------------
    def guided(self, denoiser: Denoiser, prompt: str, scale: float, n: int, negative: str = ""):
        # One encode call for both, so a cold cache loads T5 once, not twice.
        both = self.encode(denoiser, [prompt, negative])
        return both[0:1].repeat_interleave(n), both[1:2].repeat_interleave(n)

    def run(self, denoiser: Denoiser, eps_fn, x: torch.Tensor, timesteps: list[int], generator,
            description: str, hook=None, callback: StepCallback | None = None) -> torch.Tensor:
        with progress_bar(len(timesteps), description, not self.quiet) as bar:
            return denoise_loop(eps_fn, x, timesteps, denoiser.schedule, generator, hook=hook,
                                callback=callback, progress=bar)

    # ---- commands ----------------------------------------------------------------------------
    def sample(self, prompt: str, *, seed: int = 0, cfg: float = 7.0, stride: int = 30, num_samples: int = 1,
               upscale: bool | None = None, stage2_steps: int = 50, stage2_cfg: float = 4.0,
               noise_level: int = 250, negative_prompt: str = "", callback: StepCallback | None = None) -> Result:
        if num_samples < 1:
            raise DfeditError(f"--num-samples must be at least 1, got {num_samples}")
        gen = make_generator(seed)
        s1 = self.stage1()
        ts = s1.schedule.strided_timesteps(stride)
        cond, uncond = self.guided(s1, prompt, cfg, num_samples, negative_prompt)
        x = randn((num_samples, s1.channels, s1.sample_size, s1.sample_size), gen, s1.device, s1.dtype)
        x = self.run(s1, cfg_fn(s1, cond, uncond, cfg), x, ts, gen, "stage I", callback=callback)
        meta = {"command": "sample", "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed,
                "cfg": cfg, "stride": stride, "steps": len(ts), "model": s1.name, "num_samples": num_samples}
        self._done_with("_s1")
        if upscale is None:
            upscale = getattr(s1, "default_upscale", True)
        if not upscale:
            return Result(x, x, meta)
        up = self.upscale(x, prompt, generator=gen, steps=stage2_steps, cfg=stage2_cfg, noise_level=noise_level,
                          negative_prompt=negative_prompt)
        meta.update({"stage2": self.stage2_model, "stage2_steps": stage2_steps, "stage2_cfg": stage2_cfg,
                     "noise_level": noise_level})
        return Result(up, x, meta)

    def upscale(self, low_res: torch.Tensor, prompt: str, *, generator: torch.Generator, steps: int = 50,
                cfg: float = 4.0, noise_level: int = 250, negative_prompt: str = "") -> torch.Tensor:
        """IF stage II: x_T at the upscaler's size, conditioned on the noised, upsampled low-res image."""
        s2 = self.stage2()
        n = low_res.shape[0]
        ts = s2.schedule.leading_timesteps(steps)
        noise_level = s2.noising_schedule.check_t(noise_level, "--noise-level")
        cond, uncond = self.guided(s2, prompt, cfg, n, negative_prompt)
        size = s2.sample_size
        # Draw order as IFSuperResolutionPipeline: x_T first, then the conditioning-image noise.
        x = randn((n, s2.channels, size, size), generator, s2.device, s2.dtype)
        up = F.interpolate(low_res.to(s2.device, s2.dtype), (size, size), mode="bilinear", align_corners=True)
        levels = torch.tensor([noise_level] * n, device=up.device)
        up = s2.noising_schedule.add_noise(up, randn(up.shape, generator, up.device, up.dtype), levels)
        cond, uncond = cond.with_image(up, levels), uncond.with_image(up, levels)
        out = self.run(s2, cfg_fn(s2, cond, uncond, cfg), x, ts, generator, "stage II")
        self._done_with("_s2")
        return out

    def noise(self, image: torch.Tensor, ts: list[int], seed: int = 0) -> list[torch.Tensor]:
        """Forward process x_t = sqrt(abar) x0 + sqrt(1 - abar) eps at each t (one draw per t)."""
        schedule = self.stage1().schedule if self._s1 is not None else _schedule_for(self.model)
        gen = make_generator(seed)
        out = []
        for t in ts:
            t = schedule.check_t(t)
            out.append(schedule.add_noise(image, randn(image.shape, gen, image.device, image.dtype), t))
        return out

    def denoise(self, image: torch.Tensor, ts: list[int], *, prompt: str = "a high quality photo", seed: int = 0,
                cfg: float = 7.0, stride: int = 30, blur_kernel: int = 5, blur_sigma: float = 2.0) -> list[dict]:
        """The course's comparison at each t: noisy, Gaussian blur, one-step and iterative denoising."""
        s1 = self.stage1()
        sched = s1.schedule
        grid_ts = sched.strided_timesteps(stride)
        ts = [sched.check_t(t) for t in ts]
        gen = make_generator(seed)
        cond, uncond = self.guided(s1, prompt, cfg, 1)
        eps_fn = cfg_fn(s1, cond, uncond, cfg)
        x0 = image.to(s1.device, s1.dtype)
        rows = []
        for t in ts:
            x_t = sched.add_noise(x0, randn(x0.shape, gen, x0.device, x0.dtype), t)
            eps, _ = eps_fn(x_t, t)
            one_step = sched.eps_to_x0(x_t, eps, t).clamp(-1, 1)
            # Iterative: from t down the stride grid (t itself need not be on it).
            chain = [t] + [s for s in grid_ts if s < t]
            iterative = self.run(s1, eps_fn, x_t, chain, gen, f"denoise t={t}")
            rows.append({"t": t, "noisy": x_t, "blur": gaussian_blur(x_t, blur_kernel, blur_sigma),
                         "one_step": one_step, "iterative": iterative})
        return rows


def _schedule_for(model: str):
    emoji = _emoji_backend(model)
    if emoji is not None:
        return emoji.load_denoiser(model, torch.device("cpu"), torch.float32).schedule
    from .models import load_configs
    return load_configs(model)[1]


def _emoji_backend(model: str):
    """dfedit_train's checkpoint module when `model` is one of its checkpoint directories."""
    try:
        from dfedit_train import checkpoint
    except ImportError:
        return None
    return checkpoint if checkpoint.is_checkpoint_dir(model) else None


def load_denoiser(model: str, device: torch.device, dtype: torch.dtype, **kw) -> Denoiser:
    """IF stage I, or a dfedit_train checkpoint: both implement the Denoiser protocol."""
    emoji = _emoji_backend(model)
    if emoji is not None:
        return emoji.load_denoiser(model, device, dtype)
    return load_if(model, device, dtype, **kw)


def model_size(model: str) -> int:
    """The stage I model's image side, from its config (no weights loaded)."""
    emoji = _emoji_backend(model)
    if emoji is not None:
        return emoji.load_denoiser(model, torch.device("cpu"), torch.float32).sample_size
    from .models import load_configs
    cfg = load_configs(model)[0]
    s = cfg.get("sample_size")
    return int(s if isinstance(s, int) else s[0])
