"""Noise schedule and the math of one strided step.

Everything the loop needs to know about a model's diffusion process lives in `NoiseSchedule`,
built from a diffusers DDPMScheduler config dict (IF ships one; the emoji trainer writes one), or
from a flow-matching config (`"flow_matching": true`, written by `dfedit-train --objective flow`).

Flow matching runs through the same variance-preserving (VP) loop: a flow state at flow time s,
x_flow = (1 - s) x0 + s eps, is a rescaled VP state, x_vp = x_flow / r with r = sqrt((1-s)^2 + s^2),
at abar = (1 - s)^2 / r^2. Loop timestep t sits at flow time s = (t + 1) / (T + 1), so the abar
table of a flow model is that formula at each t, and its velocity output v = eps - x0 becomes a
noise estimate exactly (`model_output_to_eps`). Nothing downstream knows a model is a flow model.
The step formulas follow DDPMScheduler.step term by term and in the same float32 operation order,
because the project promises bit-for-bit parity with diffusers on CPU: reordering a product or
computing a coefficient in float64 changes the last bit and the parity tests would catch it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import DfeditError, ParamError

VARIANCE_TYPES = ("learned_range", "fixed_small", "fixed_small_log", "fixed_large")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")
# x0 clipping when a scheduler config does not say: on, as in diffusers' DDPMScheduler.
CLIP_SAMPLE = True


def _alpha_bar_cosine(t: float) -> float:
    # Nichol & Dhariwal's squared cosine, with the 0.008 offset that keeps beta_0 from being tiny.
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Betas as float32, computed exactly as diffusers does (tested against DDPMScheduler)."""
    T = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        betas = [min(1 - _alpha_bar_cosine((i + 1) / T) / _alpha_bar_cosine(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float32)
    if beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start
    raise DfeditError(f"unsupported beta_schedule {beta_schedule!r} in the scheduler config")


def flow_time(t, num_train_timesteps: int):
    """Flow time s in (0, 1) of loop timestep t (int or tensor): s = (t + 1) / (T + 1).

    The offset keeps both ends inside the open interval: t = 0 is s = 1/(T+1) (abar < 1, so the x0
    formulas never divide by zero) and t = T - 1 is s = T/(T+1) (abar ~ 1e-6 > 0 for T = 1000)."""
    return (t + 1) / (num_train_timesteps + 1)


def flow_alphas_cumprod(num_train_timesteps: int) -> torch.Tensor:
    """abar_t = (1 - s)^2 / ((1 - s)^2 + s^2) at s = flow_time(t), computed in float64, stored float32."""
    s = flow_time(torch.arange(num_train_timesteps, dtype=torch.float64), num_train_timesteps)
    return ((1 - s) ** 2 / ((1 - s) ** 2 + s**2)).float()


def output_to_eps(prediction_type: str, out: torch.Tensor, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """A model output of any parameterisation as a noise estimate, given x_t = alpha x0 + sigma eps
    (alpha = sqrt(abar), sigma = sqrt(1 - abar); scalars or broadcastable tensors).

    v_prediction: v = alpha eps - sigma x0  ->  eps = alpha v + sigma x_t
    sample:       x0                        ->  eps = (x_t - alpha x0) / sigma
    flow_prediction: v = eps - x0 (the velocity d x_flow / ds)  ->  eps = (alpha v + x_t) / (alpha + sigma)
    The emoji model (dfedit.emoji.precondition, also in training) converts with this same function."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return alpha * out + sigma * x_t
    if prediction_type == "sample":
        return (x_t - alpha * out) / sigma
    if prediction_type == "flow_prediction":
        return (alpha * out + x_t) / (alpha + sigma)
    raise DfeditError(f"unsupported prediction_type {prediction_type!r}")


def noise_to(x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The forward process, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (abar a scalar tensor or one
    broadcastable per sample). The one place it is written: `NoiseSchedule.add_noise` (sampling,
    SDEdit, stage II conditioning), the trainer's loss and its evaluation all noise through it."""
    return abar**0.5 * x0 + (1 - abar) ** 0.5 * noise


@dataclass
class NoiseSchedule:
    """abar table plus the sampling options a scheduler config carries."""

    alphas_cumprod: torch.Tensor  # float32, length T, on CPU
    variance_type: str = "fixed_small"
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    clip_sample: bool = CLIP_SAMPLE
    clip_sample_range: float = 1.0
    flow_matching: bool = False  # abar from flow times (module docstring); the loop is unchanged
    config: dict = field(default_factory=dict)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        T = int(config.get("num_train_timesteps", 1000))
        flow = bool(config.get("flow_matching", False))
        if flow:
            alphas_cumprod = flow_alphas_cumprod(T)
        elif config.get("trained_betas") is not None:
            betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
        else:
            betas = make_betas(
                config.get("beta_schedule", "linear"),
                T,
                float(config.get("beta_start", 0.0001)),
                float(config.get("beta_end", 0.02)),
            )
        if not flow:
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        variance_type = config.get("variance_type", "fixed_small")
        if variance_type not in VARIANCE_TYPES:
            raise DfeditError(f"unsupported variance_type {variance_type!r} in the scheduler config")
        prediction_type = config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise DfeditError(f"unsupported prediction_type {prediction_type!r} in the scheduler config")
        return cls(
            alphas_cumprod=alphas_cumprod,
            variance_type=variance_type,
            prediction_type=prediction_type,
            thresholding=bool(config.get("thresholding", False)),
            dynamic_thresholding_ratio=float(config.get("dynamic_thresholding_ratio", 0.995)),
            sample_max_value=float(config.get("sample_max_value", 1.0)),
            clip_sample=bool(config.get("clip_sample", CLIP_SAMPLE)),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)),
            flow_matching=flow,
            config=dict(config),
        )

    # ---- timesteps -------------------------------------------------------------------------
    def strided_timesteps(self, stride: int = 30, start: int | None = None) -> list[int]:
        """`range(start, -1, -stride)`: the course's 990, 960, ..., 0 for stride 30.

        `start` defaults to the largest multiple of `stride` below T, which is 990 for the default
        stride 30 (and for 10, matching diffusers' 100-step list), so the list always ends at t = 0.
        """
        T = self.num_train_timesteps
        if not 1 <= stride < T:
            raise ParamError("stride", f"must be between 1 and {T - 1}, got {stride}")
        if start is None:
            start = ((T - 1) // stride) * stride
        if not 0 <= start < T:
            raise DfeditError(f"the first timestep must be between 0 and {T - 1}, got {start}")
        return list(range(start, -1, -stride))

    def leading_timesteps(self, num_steps: int) -> list[int]:
        """diffusers' default "leading" spacing for `num_steps` (IFSuperResolutionPipeline's 50 -> 980..0)."""
        T = self.num_train_timesteps
        if not 1 <= num_steps <= T:
            raise DfeditError(f"the number of steps must be between 1 and {T}, got {num_steps}")
        ratio = T // num_steps
        return [i * ratio for i in range(num_steps)][::-1]

    def spaced_timesteps(self, num_steps: int) -> list[int]:
        """`--steps N`: N timesteps evenly spaced from T - 1 down, as diffusers' default "linspace"
        spacing (DPMSolverMultistepScheduler, EulerDiscreteScheduler): round(linspace(0, T-1, N+1))
        reversed, without the 0. For T = 1000, N = 20: 999, 949, ..., 50; the loop's last step then
        goes from 50 straight to the clean end (t' = -1), so every model call moves the image."""
        T = self.num_train_timesteps
        if not 1 <= num_steps <= T:
            raise ParamError("steps", f"must be between 1 and {T}, got {num_steps}")
        return [int(t) for t in np.linspace(0, T - 1, num_steps + 1).round()[::-1][:-1]]

    def check_t(self, t: int, param: str = "t") -> int:
        T = self.num_train_timesteps
        if not 0 <= int(t) < T:
            raise ParamError(param, f"must be between 0 and {T - 1}, got {t}")
        return int(t)

    # ---- forward process -------------------------------------------------------------------
    def abar(self, t: int) -> torch.Tensor:
        """abar[t] as a float32 0-d tensor; t = -1 means the clean end of the chain (abar = 1)."""
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, per sample if t is a tensor of timesteps.

        Same operation order as DDPMScheduler.add_noise (abar cast to the sample dtype first) so the
        stage II conditioning image is noised bit-identically.
        """
        return noise_to(x0, noise, self.abar_at(t, x0))

    def abar_at(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar of timestep t (an int, or a tensor of one timestep per sample) shaped to broadcast
        over `like` per sample, on its device and in its dtype."""
        ac = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        t = torch.as_tensor(t, device=like.device).reshape(-1)
        return ac[t].reshape((-1,) + (1,) * (like.ndim - 1))

    def eps_to_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """One-step denoising: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        a_t = self.abar(t)
        return (x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5

    def model_output_to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Turn a v-, x0- or velocity-predicting model's output into the noise estimate the loop works with.
        t: the loop's int timestep, or a tensor of one timestep per sample (the trainer's evaluation)."""
        if self.prediction_type == "epsilon":
            return out
        if torch.is_tensor(t) and t.ndim > 0:
            a_t = self.alphas_cumprod.to(t.device)[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
        else:
            a_t = self.abar(int(t))
        return output_to_eps(self.prediction_type, out, x_t, a_t**0.5, (1 - a_t) ** 0.5)

    # ---- flow matching: loop timestep <-> flow time -------------------------------------------
    def flow_time(self, t: int) -> float:
        """Flow time s of loop timestep t (module docstring); t = -1 is the clean end, s = 0."""
        return 0.0 if t < 0 else flow_time(t, self.num_train_timesteps)

    def to_flow(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The loop's VP state at t as a flow state: x_flow = x_vp / (alpha + sigma), which is
        (1 - s) x0 + s eps at s = sigma / (alpha + sigma) (= flow_time(t) for a flow_matching schedule)."""
        a_t = self.abar(t)
        return x_t / (a_t**0.5 + (1 - a_t) ** 0.5)

    # ---- the reverse step ------------------------------------------------------------------
    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Imagen's dynamic thresholding (per sample, in float32) or plain clipping, as configured."""
        if self.thresholding:
            dtype = x0.dtype
            b, c, *rest = x0.shape
            flat = x0.float().reshape(b, c * math.prod(rest))
            s = quantile(flat.abs(), self.dynamic_thresholding_ratio)
            s = torch.clamp(s, min=1, max=self.sample_max_value).unsqueeze(1)
            return (torch.clamp(flat, -s, s) / s).reshape(b, c, *rest).to(dtype)
        if self.clip_sample:
            return x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0

    def step_coefficients(self, t: int, t_prev: int) -> "StepCoefficients":
        a_t, a_p = self.abar(t), self.abar(t_prev)
        beta_prod_t = 1 - a_t
        beta_prod_p = 1 - a_p
        alpha = a_t / a_p
        beta = 1 - alpha
        beta_tilde = torch.clamp((1 - a_p) / (1 - a_t) * beta, min=1e-20)
        return StepCoefficients(
            abar_prev=a_p,
            ddim_var=(beta_prod_p / beta_prod_t) * (1 - a_t / a_p),
            sqrt_one_minus_abar=beta_prod_t**0.5,
            sqrt_abar=a_t**0.5,
            c_x0=(a_p**0.5 * beta) / beta_prod_t,
            c_xt=alpha**0.5 * beta_prod_p / beta_prod_t,
            log_beta=torch.log(beta),
            log_beta_tilde=torch.log(beta_tilde),
            beta=beta,
            beta_tilde=beta_tilde,
        )

    def step(
        self,
        x_t: torch.Tensor,
        eps: torch.Tensor,
        var: torch.Tensor | None,
        c: "StepCoefficients",
        noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t -> (x_{t'}, x0_hat) for a strided pair (t, t'); `noise` is None when t == 0."""
        x0 = (x_t - c.sqrt_one_minus_abar * eps) / c.sqrt_abar
        x0 = self.threshold(x0)
        x_prev = c.c_x0 * x0 + c.c_xt * x_t
        if noise is not None:
            x_prev = x_prev + self.noise_std(var, c) * noise
        return x_prev, x0

    def ddim_step(self, x_t: torch.Tensor, eps: torch.Tensor, c: "StepCoefficients", eta: float,
                  noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM (Song et al.): eta = 0 is deterministic, eta = 1 has DDPM's posterior variance.

        When x0 is clipped or thresholded, the direction term uses the noise estimate *consistent
        with the clipped x0*, eps' = (x_t - sqrt(abar) x0) / sqrt(1 - abar): DDIMScheduler.step with
        use_clipped_model_output=True, bit for bit. With the model's raw eps instead (diffusers'
        default), whatever clipping removes from x0 comes back with the opposite sign through the
        direction term, at full strength at low noise: the built-in emoji model draws white
        backgrounds that CFG pushes past 1, and raw-eps DDIM turned them into dark, multi-coloured
        noisy tiles (tests/emoji/test_shipped_samplers.py). Without clipping both are the same step.
        A learned variance is ignored.
        """
        x0 = self.threshold((x_t - c.sqrt_one_minus_abar * eps) / c.sqrt_abar)
        if self.thresholding or self.clip_sample:
            eps = (x_t - c.sqrt_abar * x0) / c.sqrt_one_minus_abar
        std = eta * c.ddim_var**0.5
        x_prev = c.abar_prev**0.5 * x0 + (1 - c.abar_prev - std**2) ** 0.5 * eps
        if noise is not None:
            x_prev = x_prev + std * noise
        return x_prev, x0

    def alpha_sigma(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) as float32 0-d tensors; t = -1 gives (1, 0)."""
        a_t = self.abar(t)
        return a_t**0.5, (1 - a_t) ** 0.5

    def dpm_alpha_sigma_lambda(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t)) the way DPMSolverMultistepScheduler
        computes them, in the same float32 operations (its parity with ours is tested to 1e-5 and
        these can differ from sqrt(abar) in the last bit): through the VE sigma sqrt((1 - abar) /
        abar). t = -1 is sigma = 0, alpha = 1, lambda = +inf (diffusers' final_sigmas_type "zero")."""
        if t < 0:
            sig = torch.tensor(0.0, dtype=torch.float32)
        else:
            ac = self.alphas_cumprod[t]
            sig = ((1 - ac) / ac) ** 0.5
        alpha = 1 / ((sig**2 + 1) ** 0.5)
        sigma = sig * alpha
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def noise_std(self, var: torch.Tensor | None, c: "StepCoefficients") -> torch.Tensor:
        vt = self.variance_type
        if vt == "learned_range":
            if var is None:
                raise DfeditError("this scheduler expects a learned variance but the model returned none")
            frac = (var + 1) / 2
            return torch.exp(0.5 * (frac * c.log_beta + (1 - frac) * c.log_beta_tilde))
        if vt == "fixed_small":
            return c.beta_tilde**0.5
        if vt == "fixed_small_log":
            return torch.exp(0.5 * c.log_beta_tilde)
        return c.beta**0.5  # fixed_large


def quantile(flat: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row `torch.quantile(flat, q, dim=1)` (linear interpolation), bit for bit, by selection.

    torch.quantile sorts every row; two k-th value selections give the same two order statistics
    and the same lerp 4-10x faster (0.85 -> 0.08-0.15 ms at 64 px, 18 -> 5 ms at 256 px on CPU).
    Rank and weight are computed as ATen does: in the input's dtype, floor and ceil of q (n - 1).
    """
    n = flat.shape[-1]
    rank = torch.tensor(q, dtype=flat.dtype) * (n - 1)
    lo, hi = int(rank.floor()), int(rank.ceil())
    below = flat.kthvalue(lo + 1, dim=-1).values
    above = below if hi == lo else flat.kthvalue(hi + 1, dim=-1).values
    return torch.lerp(below, above, (rank - lo).to(flat.device))


@dataclass
class StepCoefficients:
    """Float32 0-d tensors for one (t, t') pair, computed once before the loop runs."""

    abar_prev: torch.Tensor
    ddim_var: torch.Tensor
    sqrt_one_minus_abar: torch.Tensor
    sqrt_abar: torch.Tensor
    c_x0: torch.Tensor
    c_xt: torch.Tensor
    log_beta: torch.Tensor
    log_beta_tilde: torch.Tensor
    beta: torch.Tensor
    beta_tilde: torch.Tensor
