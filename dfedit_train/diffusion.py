"""Forward process, input preconditioning, training objectives and the loss.

The diffusion itself runs in plain [-1, 1] pixel space with dfedit's `NoiseSchedule`, so a trained
model drops into dfedit's loop (and its SDEdit/inpainting, which noise real images) unchanged.

Per-channel dataset standardisation (the Flax trainer's fix for a colour cast) is applied as exact
input preconditioning instead of changing the diffusion space: given per-channel data mean m and
std s, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps has per-channel mean sqrt(abar) m and variance
abar s^2 + 1 - abar, so the network sees

    x_in = (x_t - sqrt(abar) m) / sqrt(abar s^2 + 1 - abar)

(zero mean, unit variance per channel at every t: EDM's c_in, made per-channel). Standardising the
diffusion space instead would make every dfedit edit need to know the statistics.

Objectives, as NVlabs/edm's training/loss.py: an `Objective` says what the network predicts (its
target), how much plain MSE on that target weights the x0 error (for min-SNR weighting), and how
its output becomes a noise estimate; the noise levels come from the schedule the objective implies
(`DiffusionConfig.scheduler_config`). How t is sampled is the same for all: uniformly over the T
levels of that schedule (train.draw_batch).

    eps, v, x0: the cosine/linear/sigmoid VP schedule; targets eps, v = alpha eps - sigma x0, x0.
    flow:       flow matching, the course's part B: x_flow = (1 - s) x0 + s eps, target the
                velocity eps - x0, at flow times s = (t + 1) / (T + 1). Its schedule is abar_t =
                (1 - s)^2 / ((1 - s)^2 + s^2) (dfedit.schedule), because x_flow is the VP state
                x_t rescaled by sqrt((1 - s)^2 + s^2) = 1 / (alpha + sigma). The preconditioned input
                above is scale-free, so the network sees exactly the same x_in whether it is built
                from x_flow or from x_t (tests/train/test_flow.py): a flow model is trained here on
                the VP state with the velocity target and needs no special case anywhere in dfedit.
                The course draws s ~ U[0, 1]; here s takes the T = 1000 values dfedit's loop runs
                at, so the network is trained exactly where it is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dfedit.emoji.precondition import Preconditioning
from dfedit.schedule import NoiseSchedule, output_to_eps

from .config import DiffusionConfig

Tensor = torch.Tensor


@dataclass(frozen=True)
class Objective:
    """What the network is trained to predict, given x_t = alpha x0 + sigma eps (alpha = sqrt(abar))."""

    prediction_type: str  # the name in the scheduler config, which dfedit reads
    target: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (x0, eps, alpha, sigma) -> target
    # SNR-style weight that plain MSE on the target puts on the x0 error, |d target|^2 = w |d x0|^2
    # at fixed x_t, as a function of abar: min-SNR-gamma divides it out (Hang et al.).
    x0_weight: Callable[[Tensor], Tensor]

    def to_eps(self, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return output_to_eps(self.prediction_type, out, x_t, alpha, sigma)


def _snr(ab: Tensor) -> Tensor:
    return ab / (1 - ab)


def _flow_x0_weight(ab: Tensor) -> Tensor:
    # x0 = x_flow - s v at fixed x_flow, so |dv|^2 = |dx0|^2 / s^2, with s = sigma / (alpha + sigma).
    a, s = ab.sqrt(), (1 - ab).sqrt()
    return ((a + s) / s) ** 2


OBJECTIVES: dict[str, Objective] = {
    "epsilon": Objective("epsilon", lambda x0, eps, a, s: eps, _snr),
    "v_prediction": Objective("v_prediction", lambda x0, eps, a, s: a * eps - s * x0, lambda ab: _snr(ab) + 1),
    "sample": Objective("sample", lambda x0, eps, a, s: x0, lambda ab: torch.ones_like(ab)),
    "flow_prediction": Objective("flow_prediction", lambda x0, eps, a, s: eps - x0, _flow_x0_weight),
}


class Diffusion(Preconditioning):
    """The preconditioned network (dfedit.emoji.precondition: net_input, predict) plus the objective."""

    def __init__(self, cfg: DiffusionConfig, mean: list[float], std: list[float], device="cpu"):
        self.cfg = cfg
        self.objective = OBJECTIVES[cfg.prediction_type]
        super().__init__(NoiseSchedule.from_config(cfg.scheduler_config()), mean, std, device)

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Any objective's output as a noise estimate (per-sample t; dfedit's version takes an int)."""
        ab = self._ab(t)
        return self.objective.to_eps(out, x_t, ab.sqrt(), (1 - ab).sqrt())

    def loss(self, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, text, mask) -> torch.Tensor:
        """Per-sample MSE on the objective's target, min-SNR weighted if gamma > 0. Shape (B,)."""
        ab = self._ab(t)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        out = self.predict(net, x_t, t, text, mask).float()
        target = self.objective.target(x0, noise, ab.sqrt(), (1 - ab).sqrt())
        per = ((out - target) ** 2).mean(dim=(1, 2, 3))
        g = self.cfg.min_snr_gamma
        if g > 0:
            # Hang et al.: weight = min(SNR, gamma) relative to the objective's implicit weight on x0.
            w = torch.clamp(_snr(ab).flatten(), max=g)
            per = per * (w / self.objective.x0_weight(ab).flatten())
        return per
