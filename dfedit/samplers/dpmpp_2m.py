"""dpmpp-2m: DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep ODE solver, as diffusers' DPMSolverMultistepScheduler."""

from __future__ import annotations

import torch

from . import SamplerContext, register


@register("dpmpp-2m", "DPM-Solver++(2M): 2nd-order multistep ODE solver; ~20 calls do what DDPM needs 34-50 for",
          ode=True)
def sample_dpmpp_2m(ctx: SamplerContext, x: torch.Tensor, t: int, t_prev: int):
    """DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
    final_sigmas_type="zero") step by step, in its float32 operation order: data prediction
    (thresholded x0), first order on the first step and on the last one (to sigma = 0), second order
    in between with D1 = (x0 - x0_prev) / r0."""
    eps, _ = ctx.eps_fn(x, t)
    sch = ctx.schedule
    a_s, s_s, l_s = sch.dpm_alpha_sigma_lambda(t)
    a_t, s_t, l_t = sch.dpm_alpha_sigma_lambda(t_prev)
    work = torch.promote_types(x.dtype, torch.float32)  # fp16/bf16 states: the update in float32, as diffusers
    xf = x.to(work)
    x0 = sch.threshold((xf - s_s * eps.to(work)) / a_s)
    h = l_t - l_s
    if ctx.history and t_prev >= 0:
        l_prev, x0_prev = ctx.history[-1]
        r0 = (l_s - l_prev) / h
        d1 = (1.0 / r0) * (x0 - x0_prev)
        out = (s_t / s_s) * xf - (a_t * (torch.exp(-h) - 1.0)) * x0 - 0.5 * (a_t * (torch.exp(-h) - 1.0)) * d1
    else:
        out = (s_t / s_s) * xf - (a_t * (torch.exp(-h) - 1.0)) * x0
    ctx.history[:] = [(l_s, x0)]
    return out.to(x.dtype), x0.to(x.dtype)
