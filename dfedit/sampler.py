"""The one loop, the timestep plan, and the small combinators that build its noise-estimate function.

Every command ends up in `denoise_loop`: `sample` starts from pure noise, SDEdit from a noised
image at some later index, RePaint adds a per-step projection hook and forward jumps in the
timestep list, anagrams/hybrids only change `eps_fn`. Nothing else in the package iterates over
timesteps. Each step is taken by a registered sampler (dfedit.samplers, one file each).
"""

from __future__ import annotations

from typing import Callable

import torch

from .constants import DEFAULT_SAMPLER, DEFAULT_STRIDE
from .denoiser import Cond, Denoiser, EpsFn
from .errors import ParamError
from .progress import Progress
from .samplers import SamplerContext, check_sampler, get_sampler, randn, resampling_needs_noise, step_pairs
from .schedule import NoiseSchedule

# hook(i, t_prev, x_prev, x0_hat) -> x_prev : projection applied after each step (inpainting).
StepHook = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]
# callback(i, t, t_prev, x_prev, x0_hat) : observation only (trajectories, tests).
StepCallback = Callable[[int, int, int, torch.Tensor, "torch.Tensor | None"], None]


def plan_timesteps(schedule: NoiseSchedule, sampler: str = DEFAULT_SAMPLER, stride: int | None = None,
                   steps: int | None = None) -> list[int]:
    """The timestep list of a run: `--steps N` (N model calls, diffusers' linspace spacing) or
    `--stride K` (990, 990 - K, ..., 0; the default, K = 30)."""
    if stride is not None and steps is not None:
        raise ParamError("stride", "and {steps} cannot both be given: give one of them", also=("steps",))
    if steps is not None:
        if steps < 1:
            raise ParamError("steps", f"must be at least 1, got {steps}")
        return schedule.spaced_timesteps(get_sampler(sampler).timesteps_for_calls(steps))
    return schedule.strided_timesteps(DEFAULT_STRIDE if stride is None else stride)


# ---- the loop ---------------------------------------------------------------------------------------

def denoise_loop(
    eps_fn: EpsFn,
    x: torch.Tensor,
    timesteps: list[int],
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
    hook: StepHook | None = None,
    callback: StepCallback | None = None,
    progress: Progress | None = None,
    eta: float | None = None,
    sampler: str | None = None,
) -> torch.Tensor:
    """Run x (at timesteps[0]) down the chain to t' = -1 and return the clean estimate.

    `sampler` names a registered sampler (default "ddpm"; for backward compatibility, giving only
    `eta` selects "ddim" with that eta). A pair with t' > t is a forward jump (RePaint's
    resampling): x is re-noised from t to t' with one fresh draw instead of calling the model;
    deterministic samplers refuse such lists. Random draws happen in diffusers' order.
    """
    name = sampler or ("ddim" if eta is not None else DEFAULT_SAMPLER)
    eta = 0.0 if eta is None else float(eta)
    spec = check_sampler(name, eta)
    pairs = step_pairs(timesteps)
    if any(tp > t for t, tp in pairs) and not spec.stochastic(eta):
        raise resampling_needs_noise()
    ctx = SamplerContext(eps_fn, schedule, generator, eta)
    for t, tp in pairs:  # coefficients precomputed, so the hot loop is tensor ops only
        if tp < t:
            ctx.coef(t, tp)
    for i, (t, t_prev) in enumerate(pairs):
        if t_prev > t:  # forward jump t -> t_prev > t
            ratio = schedule.abar(t_prev) / schedule.abar(t)
            z = randn(x.shape, generator, x.device, x.dtype)
            x = ratio**0.5 * x + (1 - ratio) ** 0.5 * z
            x0 = None
            ctx.history.clear()
        else:
            x, x0 = spec.step(ctx, x, t, t_prev)
            if hook is not None:
                x = hook(i, t_prev, x, x0)
        if callback is not None:
            callback(i, t, t_prev, x, x0)
        if progress is not None:
            progress.advance()
    return x


# ---- combinators: build eps_fn from a denoiser ------------------------------------------------

def conditioned(denoiser: Denoiser, cond: Cond) -> EpsFn:
    """No guidance: the conditional estimate alone."""
    return lambda x, t: denoiser(x, t, cond)


def cfg(denoiser: Denoiser, cond: Cond, uncond: Cond, scale: float) -> EpsFn:
    """Classifier-free guidance: eps_u + s (eps_c - eps_u), uncond and cond in one batched call.

    Guidance acts on the noise channels only; the learned variance comes from the conditional half,
    as in IFPipeline. Scale 1 is the conditional model exactly, so it skips the second half; any
    other scale (including 0 = unconditional, or 0 < s < 1) uses the formula as written.
    """
    if scale == 1.0:
        return conditioned(denoiser, cond)
    both = Cond.cat([uncond, cond])

    def eps_fn(x: torch.Tensor, t: int):
        eps, var = denoiser(torch.cat([x, x]), t, both)
        eps_u, eps_c = eps.chunk(2)
        guided = eps_u + scale * (eps_c - eps_u)
        return guided, (None if var is None else var.chunk(2)[1])

    return eps_fn
