"""ddim: DDIM (Song et al. 2021): deterministic with eta 0, DDPM-like noise with eta 1."""

from __future__ import annotations

import torch

from . import SamplerContext, register


@register("ddim", "DDIM: deterministic with --eta 0 (default), DDPM-like noise with --eta 1",
          ode=True, uses_eta=True)
def sample_ddim(ctx: SamplerContext, x: torch.Tensor, t: int, t_prev: int):
    """DDIMScheduler.step (use_clipped_model_output=True); one draw per step when eta > 0."""
    eps, _ = ctx.eps_fn(x, t)
    noise = ctx.noise(eps) if ctx.eta > 0 else None
    return ctx.schedule.ddim_step(x, eps, ctx.coef(t, t_prev), ctx.eta, noise)
