"""euler: Euler on the probability-flow ODE."""

from __future__ import annotations

import torch

from . import SamplerContext, register


@register("euler", "Euler on the probability-flow ODE; the same step as DDIM with eta 0 (and as the "
          "course's flow-matching sampler on a flow model)", ode=True)
def sample_euler(ctx: SamplerContext, x: torch.Tensor, t: int, t_prev: int):
    """x' = alpha' x0 + sigma' eps (x0 thresholded, eps consistent with it). In flow coordinates
    (x_flow = x / (alpha + sigma), s = sigma / (alpha + sigma), velocity v = eps - x0) this is
    x_flow' = x_flow + (s' - s) v: the course's Euler step; in k-diffusion's VE coordinates it is
    x' = x + (sigma'_ve - sigma_ve) d. All three are the same update."""
    x0, eps = ctx.denoised(x, t)
    if t_prev < 0:
        return x0, x0
    a2, s2 = ctx.schedule.alpha_sigma(t_prev)
    return a2 * x0 + s2 * eps, x0
