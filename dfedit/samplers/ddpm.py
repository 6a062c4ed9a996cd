"""ddpm: Strided DDPM (ancestral), the course's sampler and what IFPipeline runs."""

from __future__ import annotations

import torch

from . import SamplerContext, register


@register("ddpm", "strided DDPM (ancestral): the course's sampler and IF's; what IFPipeline runs", ode=False)
def sample_ddpm(ctx: SamplerContext, x: torch.Tensor, t: int, t_prev: int):
    """DDPMScheduler.step for the pair (t, t'), learned or fixed variance. Noise is drawn for every
    step that does not end at the clean end; on lists ending at t = 0 that is diffusers' `t > 0`."""
    eps, var = ctx.eps_fn(x, t)
    noise = ctx.noise(eps) if t_prev >= 0 else None
    return ctx.schedule.step(x, eps, var, ctx.coef(t, t_prev), noise)
