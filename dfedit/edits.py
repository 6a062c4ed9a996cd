"""Edits: what each generating command contributes to the one loop, and the pieces they are made of.

An `Edit` says which prompts it encodes, how it builds its start state, its noise-estimate
function and its per-step hook, each for the denoiser of the stage it runs in (stage I, or stage
II when upscaling, so sizes always come from that model). The recipes at the top (`sample`,
`sdedit`, `inpaint`, `anagram`, `hybrid`) build one and check their own parameters when they do,
before any weights load; `DFEdit` runs it against a `Plan`. None of these functions iterates over
timesteps: SDEdit = a noised start state; inpainting = a projection hook (+ RePaint's up/down
timestep list); anagrams = views around the denoiser; hybrids = frequency splits of the per-prompt
estimates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from .constants import DEFAULT_STRIDE
from .denoiser import Cond, Denoiser, EpsFn
from .errors import DfeditError, ParamError
from .images import image_at, mask_at
from .plan import check_seed
from .sampler import StepHook, cfg, randn
from .splits import check_split, frequency_split
from .schedule import NoiseSchedule
from .views import View, check_views, make_view

if TYPE_CHECKING:
    from .plan import Plan


def _cfg_first(den: Denoiser, conds: list[Cond], uncond: Cond, scale: float) -> EpsFn:
    return cfg(den, conds[0], uncond, scale)


@dataclass
class Edit:
    """What an edit contributes to the one loop; each builder receives the stage's denoiser."""

    name: str
    prompts: list[str]
    # (denoiser, per-prompt conds, uncond, scale) -> eps_fn; default: CFG on the first prompt
    eps: Callable[[Denoiser, list[Cond], Cond, float], EpsFn] = _cfg_first
    # stage I start state: (denoiser, timesteps, generator, n, previous) -> (x, timesteps still to
    # run), where `previous` is the last pass's output when the edit repeats (else None); None = noise
    start: Callable | None = None
    # per-step hook factory (denoiser, generator) -> hook, applied in both stages (inpainting)
    hook: Callable[[Denoiser, torch.Generator], StepHook] | None = None
    # rewrites a stage's timestep list (RePaint's resampling revisits stretches), both stages
    timestep_transform: Callable[[list[int]], list[int]] | None = None
    resamples: bool = False  # the timestep list jumps back up: the sampler must draw fresh noise
    repeat: int = 1  # stage I passes, each starting from the last one's output (SDEdit's feedback)
    meta: dict = field(default_factory=dict)


# ---- the recipes -------------------------------------------------------------------------------


def sample(prompt: str) -> Edit:
    """Text -> image: pure noise, CFG on the prompt."""
    return Edit("sample", [prompt])


def sdedit(image, prompt: str, i_start: int, plan: "Plan", repeat: int = 1) -> Edit:
    """Noise `image` (PIL, tensor or path) to the plan's timestep at index i_start and denoise from
    there; repeat > 1 feeds each pass's result into the next, as in SDEdit's paper."""
    check_i_start(i_start, plan.timesteps, plan.stride or DEFAULT_STRIDE, plan.steps)
    if repeat < 1:
        raise ParamError("repeat", f"must be at least 1, got {repeat}")

    def start(den, ts, g, n, previous=None):
        x = image_at(image if previous is None else previous, den.sample_size).to(den.device, den.dtype)
        x = x.expand(n, -1, -1, -1) if x.shape[0] == 1 else x
        return sdedit_start(x, ts, i_start, den.schedule, g)

    return Edit("sdedit", [prompt], start=start, repeat=repeat, meta={"i_start": i_start, "repeat": repeat})


def inpaint(image, mask, prompt: str, size: int, *, invert_mask: bool = False, jump_length: int = 1,
            jump_n_sample: int = 1) -> Edit:
    """RePaint: regenerate where the mask (at the model's `size`) is white, keep the rest exactly,
    also in stage II. jump_n_sample > 1 resamples, which needs a sampler that draws fresh noise."""
    repaint_timesteps([0], jump_length, jump_n_sample)  # checks both before anything loads
    check_mask(mask_at(mask, size, invert_mask), invert_mask)

    def hook(den, g):
        orig = image_at(image, den.sample_size).to(den.device, den.dtype)
        m = mask_at(mask, den.sample_size, invert_mask).to(den.device, den.dtype)
        return inpaint_hook(orig, m, den.schedule, g)

    return Edit("inpaint", [prompt], hook=hook,
                timestep_transform=lambda ts: repaint_timesteps(ts, jump_length, jump_n_sample),
                resamples=jump_n_sample > 1,
                meta={"invert_mask": invert_mask, "jump_length": jump_length, "jump_n_sample": jump_n_sample})


def anagram(prompts: list[str], views: list[str], view_seed: int = 0, offered=None, base_size: int | None = None) -> Edit:
    """Visual anagram: prompt k is what the image shows under view k (views[0] is usually identity).
    `offered`: the view names an unknown one's message suggests (default: all). `base_size`: stage
    I's size, which stage II's views must follow (dfedit.views.make_view)."""
    if len(prompts) < 2:
        raise DfeditError("an anagram needs at least two prompts")
    if len(views) != len(prompts):
        raise DfeditError(f"{len(prompts)} prompts need {len(prompts)} views (got {len(views)})")
    check_views(views, offered)
    check_seed(view_seed, "view_seed")

    def eps(den, conds, uncond, scale):
        vs = [make_view(v, den.sample_size, view_seed, base=base_size) for v in views]
        return multi_guided(den, conds, uncond, scale, vs)

    return Edit("anagram", list(prompts), eps=eps, meta={"views": list(views), "view_seed": view_seed})


def hybrid(prompts: list[str], size: int, split: str = "gaussian", kernel: int | None = None,
           sigma: float | None = None) -> Edit:
    """Hybrid image (factorized diffusion): the first component of the split follows prompts[0], the
    last prompts[-1] (and the middle band prompts[1] with three prompts, gaussian only); the splits
    are dfedit/splits/ (gaussian, color, motion_blur, scaling). kernel and sigma are given at 64 px
    and scale with the model's `size`, like the defaults."""
    if len(prompts) not in (2, 3):
        raise DfeditError(f"a hybrid takes two or three prompts, got {len(prompts)}")
    check_split(split, size, len(prompts), kernel, sigma)

    def eps(den, conds, uncond, scale):
        f = den.sample_size / 64
        k = None if kernel is None else max(1, round(kernel * f)) | 1
        s = None if sigma is None else sigma * f
        combine = frequency_split(split, den.sample_size, len(prompts), k, s)
        return multi_guided(den, conds, uncond, scale, combine=combine)

    return Edit("hybrid", list(prompts), eps=eps, meta={"split": split, "kernel": kernel, "sigma": sigma})

# ---- SDEdit --------------------------------------------------------------------------------------


def check_i_start(i_start: int, timesteps: list[int], stride: int | None = None, steps: int | None = None) -> int:
    """i_start must index the run's timesteps (named with the stride or steps when known)."""
    if not 0 <= i_start < len(timesteps):
        which = f" for {{steps}} {steps}" if steps is not None else (f" for stride {stride}" if stride else "")
        raise ParamError("i_start", f"must be between 0 and {len(timesteps) - 1}{which}, got {i_start}",
                         also=("steps",))
    return i_start


def sdedit_start(image: torch.Tensor, timesteps: list[int], i_start: int, schedule: NoiseSchedule,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, list[int]]:
    """Noise the image to timesteps[i_start] and return (x, the timesteps still to run)."""
    if not 0 <= i_start < len(timesteps):  # the recipe checked it; a direct caller gets the same sentence
        check_i_start(i_start, timesteps)
    t = timesteps[i_start]
    x = schedule.add_noise(image, randn(image.shape, generator, image.device, image.dtype), t)
    return x, timesteps[i_start:]


# ---- inpainting ----------------------------------------------------------------------------------


def check_mask(m: torch.Tensor, invert: bool = False) -> None:
    """A mask must mark something to regenerate, at the size the model sees it."""
    if not bool((m > 0.5).any()):
        colour = "white (keep everything, with {invert_mask})" if invert else "black (keep everything)"
        raise ParamError("mask", f"is all {colour} at the model's {m.shape[-1]} px, so there is nothing to "
                                 "inpaint: white marks the part to regenerate", also=("invert_mask",))


def inpaint_hook(original: torch.Tensor, mask: torch.Tensor, schedule: NoiseSchedule,
                 generator: torch.Generator | None) -> StepHook:
    """After each step to t': keep the generated pixels where mask = 1, and put the original,
    forward-noised to t' with fresh noise, where mask = 0. At t' = -1 the original goes in clean,
    so pixels outside the mask come out exactly equal to the input."""

    def hook(i: int, t_prev: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        if t_prev < 0:
            known = original
        else:
            known = schedule.add_noise(original, randn(original.shape, generator, x.device, x.dtype), t_prev)
        return mask * x + (1 - mask) * known

    return hook


def repaint_timesteps(timesteps: list[int], jump_length: int = 1, jump_n_sample: int = 1) -> list[int]:
    """RePaint's resampling schedule on a strided list: every `jump_length` steps (counted from the
    clean end) jump back up `jump_length` strides and denoise that stretch again, `jump_n_sample - 1`
    extra times. The upward pairs are forward jumps x_t -> x_{t+k} in the loop (one fresh draw).
    jump_n_sample 1 gives the list unchanged (plain per-step replacement)."""
    for name, value in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if value < 1:
            raise ParamError(name, f"must be at least 1, got {value}")
    n = len(timesteps)
    if jump_n_sample == 1 or jump_length >= n:
        return list(timesteps)
    left = {i: jump_n_sample - 1 for i in range(n - 1, jump_length - 1, -jump_length)}
    out, i = [timesteps[0]], 0
    while i < n - 1:
        i += 1
        out.append(timesteps[i])
        if left.get(i, 0) > 0:
            left[i] -= 1
            i -= jump_length
            out.append(timesteps[i])
    return out


# ---- several prompts / views at once ------------------------------------------------------------


def _viewed(cond: Cond, view: View) -> Cond:
    # Stage II: the upsampled low-res image is part of the UNet input, so it goes through the view too.
    return cond if cond.image is None else cond.with_image(view.apply(cond.image), cond.noise_level)


def multi_guided(denoiser: Denoiser, conds: list[Cond], uncond: Cond, scale: float,
                 views: list[View] | None = None,
                 combine: Callable[[list[torch.Tensor]], torch.Tensor] | None = None) -> EpsFn:
    """CFG for K (view, prompt) branches in ONE batched UNet call per step.

    Branch k sees view_k(x) with prompt k; its guided estimate goes back through view_k^-1 (the
    variance too, except for negate), then `combine` merges the K estimates (mean by default, as
    for anagrams; hybrids pass a frequency split). Variances are averaged. When every view is the
    identity the unconditional half is shared: K + 1 images per sample instead of 2K.
    """
    k = len(conds)
    views = views or [View(denoiser.sample_size)] * k
    if len(views) != k:
        raise DfeditError(f"{len(views)} views need {len(views)} prompts, got {k}")
    combine = combine or (lambda es: torch.stack(es).mean(0))
    shared_uncond = all(type(v) is View for v in views)
    guided = scale != 1.0
    if guided:
        unconds = [uncond] if shared_uncond else [_viewed(uncond, v) for v in views]
    else:
        unconds = []
    batch_cond = Cond.cat(unconds + [_viewed(c, v) for c, v in zip(conds, views)])
    n_u = len(unconds)

    def eps_fn(x: torch.Tensor, t: int):
        xs = [v.apply(x) for v in views]
        if guided:
            inp = torch.cat(([x] if shared_uncond else xs) + xs)
        else:
            inp = torch.cat(xs)
        eps, var = denoiser(inp, t, batch_cond)
        e = eps.chunk(n_u + k)
        v_c = var.chunk(n_u + k)[n_u:] if var is not None else None
        outs, variances = [], []
        for j, view in enumerate(views):
            e_c = e[n_u + j]
            if guided:
                e_u = e[0] if shared_uncond else e[j]
                e_c = e_u + scale * (e_c - e_u)
            outs.append(view.inverse(e_c))
            if v_c is not None:
                variances.append(view.inverse_variance(v_c[j]))
        return combine(outs), (torch.stack(variances).mean(0) if variances else None)

    return eps_fn
