"""The one strided loop, and the small combinators that build its noise-estimate function.

Every command ends up here: `sample` starts from pure noise at t=990, SDEdit from a noised image at
some later index, RePaint adds a per-step projection hook and forward jumps in the timestep list,
anagrams/hybrids only change `eps_fn`. Nothing else in the package iterates over timesteps.
"""

from __future__ import annotations

from typing import Callable

import torch

from .denoiser import Cond, Denoiser, EpsFn
from .errors import DfeditError
from .progress import Progress
from .schedule import NoiseSchedule

# hook(i, t_prev, x_prev, x0_hat) -> x_prev : projection applied after each step (inpainting).
StepHook = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]
# callback(i, t, t_prev, x_prev, x0_hat) : observation only (trajectories, tests).
StepCallback = Callable[[int, int, int, torch.Tensor, "torch.Tensor | None"], None]


def randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device, then moved: diffusers' randn_tensor rule,
    so a CPU generator gives the same numbers whatever device the model runs on."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def step_pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """(t, t') pairs; the last timestep steps to t' = -1 (abar = 1), which returns the x0 estimate."""
    ts = [int(t) for t in timesteps]
    if ts and ts[-1] != -1:
        ts = ts + [-1]
    return list(zip(ts[:-1], ts[1:]))


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
) -> torch.Tensor:
    """Run x (at timesteps[0]) down the strided chain to t' = -1 and return the clean estimate.

    eta None: the strided DDPM step (learned or fixed variance). eta >= 0: DDIM with that eta.
    A pair with t' > t is a forward jump (RePaint's resampling): x is re-noised from t to t'
    with fresh noise instead of calling the model. Random draws happen in diffusers' order: one
    per reverse step with t > 0 (DDPM) or with eta > 0 (DDIM), none for DDPM's terminal step.
    """
    if eta is not None and eta < 0:
        raise DfeditError(f"--eta must be >= 0, got {eta}")
    pairs = step_pairs(timesteps)
    # Coefficients are 0-d float32 tensors precomputed once, so the hot loop is tensor ops only.
    coefs = [schedule.step_coefficients(t, tp) if tp < t else None for t, tp in pairs]
    for i, ((t, t_prev), c) in enumerate(zip(pairs, coefs)):
        if c is None:  # forward jump t -> t_prev > t
            ratio = schedule.abar(t_prev) / schedule.abar(t)
            z = randn(x.shape, generator, x.device, x.dtype)
            x = ratio**0.5 * x + (1 - ratio) ** 0.5 * z
            x0 = None
        else:
            eps, var = eps_fn(x, t)
            if eta is None:
                noise = randn(eps.shape, generator, eps.device, eps.dtype) if t > 0 else None
                x, x0 = schedule.step(x, eps, var, c, noise)
            else:
                noise = randn(eps.shape, generator, eps.device, eps.dtype) if eta > 0 else None
                x, x0 = schedule.ddim_step(x, eps, c, eta, noise)
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
