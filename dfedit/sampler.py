"""The one loop, the sampler registry, and the small combinators that build its noise-estimate function.

Every command ends up in `denoise_loop`: `sample` starts from pure noise, SDEdit from a noised
image at some later index, RePaint adds a per-step projection hook and forward jumps in the
timestep list, anagrams/hybrids only change `eps_fn`. Nothing else in the package iterates over
timesteps.

Samplers are a registry in the style of k-diffusion's sampling.py: one function per sampler, one
signature for all of them, `step(ctx, x, t, t_prev) -> (x_prev, x0_hat)`, one file. Unlike
k-diffusion's, each function is one step, not a loop of its own, so the hooks, forward jumps,
callbacks and progress bars every edit relies on live in the one loop and work with every sampler.
A sampler that needs more than the current state (DPM-Solver++'s previous x0 estimate) keeps it
in `ctx.history`; the loop clears it at a forward jump.

| name     | kind                         | model calls per step                    |
|----------|------------------------------|-----------------------------------------|
| ddpm     | ancestral (fresh noise)      | 1                                       |
| ddim     | ODE (eta = 0) / SDE (eta > 0)| 1                                       |
| dpmpp-2m | ODE, 2nd-order multistep     | 1                                       |
| euler    | ODE, 1st order               | 1 (the same step as DDIM with eta 0)    |
| heun     | ODE, 2nd order               | 2 (1 for the last step to the clean end)|

Every sampler thresholds or clips x0 as the model's scheduler config says, and every ODE step
moves x consistently with that thresholded x0 (see `NoiseSchedule.ddim_step`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .denoiser import Cond, Denoiser, EpsFn
from .errors import ParamError
from .progress import Progress
from .schedule import NoiseSchedule, StepCoefficients

# hook(i, t_prev, x_prev, x0_hat) -> x_prev : projection applied after each step (inpainting).
StepHook = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]
# callback(i, t, t_prev, x_prev, x0_hat) : observation only (trajectories, tests).
StepCallback = Callable[[int, int, int, torch.Tensor, "torch.Tensor | None"], None]

DEFAULT_SAMPLER = "ddpm"
DEFAULT_STRIDE = 30


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


# ---- the registry ----------------------------------------------------------------------------------

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


# ---- the samplers ------------------------------------------------------------------------------------

@register("ddpm", "strided DDPM (ancestral): the course's sampler and IF's; what IFPipeline runs", ode=False)
def sample_ddpm(ctx: SamplerContext, x: torch.Tensor, t: int, t_prev: int):
    """DDPMScheduler.step for the pair (t, t'), learned or fixed variance. Noise is drawn for every
    step that does not end at the clean end; on lists ending at t = 0 that is diffusers' `t > 0`."""
    eps, var = ctx.eps_fn(x, t)
    noise = ctx.noise(eps) if t_prev >= 0 else None
    return ctx.schedule.step(x, eps, var, ctx.coef(t, t_prev), noise)


@register("ddim", "DDIM: deterministic with --eta 0 (default), DDPM-like noise with --eta 1",
          ode=True, uses_eta=True)
def sample_ddim(ctx: SamplerContext, x: torch.Tensor, t: int, t_prev: int):
    """DDIMScheduler.step (use_clipped_model_output=True); one draw per step when eta > 0."""
    eps, _ = ctx.eps_fn(x, t)
    noise = ctx.noise(eps) if ctx.eta > 0 else None
    return ctx.schedule.ddim_step(x, eps, ctx.coef(t, t_prev), ctx.eta, noise)


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


@register("heun", "Heun (2nd order, EDM's corrector) in flow-matching time: 2 model calls per step",
          ode=True, calls_per_step=2)
def sample_heun(ctx: SamplerContext, x: torch.Tensor, t: int, t_prev: int):
    """Euler predictor, then the trapezoidal corrector x_flow'' = x_flow + (s' - s)(v + v') / 2 with
    the velocity v' at the predicted point; the step to the clean end is Euler (as EDM's last step).

    The corrector is taken in flow time s in [0, 1] rather than in k-diffusion's VE sigma: the
    cosine schedule's first timestep (999) has sigma_ve ~ 2e4, and the trapezoid over such a step
    multiplies the change in eps by hundreds. Measured on the emoji model at --steps 19: the VE
    version left |x| ~ 500 after the first step (the VP state should stay ~ 4); in s the same step
    spans 0.1 and behaves."""
    x0, eps = ctx.denoised(x, t)
    if t_prev < 0:
        return x0, x0
    sch = ctx.schedule
    a, s = sch.alpha_sigma(t)
    a2, s2 = sch.alpha_sigma(t_prev)
    x1 = a2 * x0 + s2 * eps
    x0b, epsb = ctx.denoised(x1, t_prev)
    ds = s2 / (a2 + s2) - s / (a + s)
    return x1 + (a2 + s2) * ds * 0.5 * ((epsb - x0b) - (eps - x0)), x0


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
