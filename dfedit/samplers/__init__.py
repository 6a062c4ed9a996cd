"""The sampler registry: one file per sampler in this folder, one signature for all of them.

In the style of k-diffusion's sampling.py, every sampler is a step function
`step(ctx, x, t, t_prev) -> (x_prev, x0_hat)` registered with `@register(name, summary, ...)`;
unlike k-diffusion's, each is one step, not a loop of its own, so the hooks, forward jumps,
callbacks and progress bars every edit relies on live in the one loop (dfedit.sampler) and work
with every sampler. A sampler that needs more than the current state (DPM-Solver++'s previous x0
estimate) keeps it in `ctx.history`; the loop clears it at a forward jump.

| name     | kind                         | model calls per step                    |
|----------|------------------------------|-----------------------------------------|
| ddpm     | ancestral (fresh noise)      | 1                                       |
| ddim     | ODE (eta = 0) / SDE (eta > 0)| 1                                       |
| dpmpp-2m | ODE, 2nd-order multistep     | 1                                       |
| euler    | ODE, 1st order               | 1 (the same step as DDIM with eta 0)    |
| heun     | ODE, 2nd order               | 2 (1 for the last step to the clean end)|

Every sampler thresholds or clips x0 as the model's scheduler config says, and every ODE step
moves x consistently with that thresholded x0 (see `NoiseSchedule.ddim_step`).

Adding a sampler is one file here, NAME.py (dashes in the name become underscores in the file
name): the command line lists the files without importing torch (dfedit.constants.SAMPLER_NAMES).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..constants import SAMPLER_NAMES
from ..denoiser import EpsFn
from ..errors import ParamError
from ..schedule import NoiseSchedule, StepCoefficients


def resampling_needs_noise() -> ParamError:
    """RePaint resampling with a deterministic sampler; named as parameters (see ParamError)."""
    return ParamError("jump_n_sample", "> 1 (RePaint resampling) needs a sampler that draws fresh noise every step: "
                      "use {sampler} ddpm, or ddim with {eta} > 0", also=("sampler", "eta"))


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


@dataclass
class SamplerContext:
    """What a step function may use besides (x, t, t'): the model, the schedule, the random draws,
    DDIM's eta, and `history` for multistep methods (cleared by the loop at a forward jump)."""

    eps_fn: EpsFn
    schedule: NoiseSchedule
    generator: torch.Generator | None = None
    eta: float = 0.0
    history: list = field(default_factory=list)
    _coefs: dict = field(default_factory=dict)

    def coef(self, t: int, t_prev: int) -> StepCoefficients:
        """DDPM/DDIM coefficients of a pair, computed once per run (0-d float32 tensors)."""
        c = self._coefs.get((t, t_prev))
        if c is None:
            c = self._coefs[(t, t_prev)] = self.schedule.step_coefficients(t, t_prev)
        return c

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return randn(like.shape, self.generator, like.device, like.dtype)

    def denoised(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps): the thresholded/clipped x0 estimate at t and the noise estimate consistent
        with it, eps = (x - alpha x0) / sigma, so that x = alpha x0 + sigma eps holds exactly."""
        eps, _ = self.eps_fn(x, t)
        a, s = self.schedule.alpha_sigma(t)
        x0 = self.schedule.threshold((x - s * eps) / a)
        return x0, (x - a * x0) / s


StepFn = Callable[[SamplerContext, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Sampler:
    name: str
    step: StepFn
    summary: str
    ode: bool  # deterministic given x (no fresh noise per step), unless it takes eta and eta > 0
    uses_eta: bool = False
    calls_per_step: int = 1  # model calls of a step that does not end at the clean end (t' = -1)

    def stochastic(self, eta: float = 0.0) -> bool:
        return not self.ode or (self.uses_eta and eta > 0)

    def model_calls(self, timesteps: list[int]) -> int:
        """Model (U-Net) calls one run over `timesteps` makes: a step to t' = -1 is always one call."""
        return sum(0 if tp > t else (1 if tp < 0 else self.calls_per_step) for t, tp in step_pairs(timesteps))

    def timesteps_for_calls(self, calls: int) -> int:
        """How many timesteps `--steps calls` buys: the largest K with model_calls(K) <= calls."""
        return max(1, (calls - 1) // self.calls_per_step + 1)


SAMPLERS: dict[str, Sampler] = {}


def register(name: str, summary: str, *, ode: bool, uses_eta: bool = False, calls_per_step: int = 1):
    def deco(fn: StepFn) -> StepFn:
        SAMPLERS[name] = Sampler(name, fn, summary, ode, uses_eta, calls_per_step)
        return fn
    return deco


def sampler_meta(sampler: str, eta: float) -> dict:
    """How an output names its sampler: eta only where the sampler reads it."""
    return {"sampler": sampler, **({"eta": eta} if get_sampler(sampler).uses_eta else {})}


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ParamError("sampler", f"{name!r} is unknown: use {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def check_sampler(name: str, eta: float = 0.0, resampling: bool = False) -> Sampler:
    """Validate sampler/eta (and RePaint resampling) before any model loads."""
    spec = get_sampler(name)
    if eta < 0:
        raise ParamError("eta", f"must be >= 0, got {eta}")
    if eta > 0 and not spec.uses_eta:
        raise ParamError("eta", f"applies to {{sampler}} ddim only (got {{sampler}} {name})", also=("sampler",))
    if resampling and not spec.stochastic(eta):
        raise resampling_needs_noise()
    return spec


for _name in SAMPLER_NAMES:  # the built-in samplers, one module each, registered on import
    importlib.import_module(f".{_name.replace('-', '_')}", __name__)
