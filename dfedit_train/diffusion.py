"""Forward process, input preconditioning and the training loss.

The diffusion itself runs in plain [-1, 1] pixel space with dfedit's `NoiseSchedule`, so a trained
model drops into dfedit's loop (and its SDEdit/inpainting, which noise real images) unchanged.

Per-channel dataset standardisation (the Flax trainer's fix for a colour cast) is applied as exact
input preconditioning instead of changing the diffusion space: given per-channel data mean m and
std s, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps has per-channel mean sqrt(abar) m and variance
abar s^2 + 1 - abar, so the network sees

    x_in = (x_t - sqrt(abar) m) / sqrt(abar s^2 + 1 - abar)

(zero mean, unit variance per channel at every t: EDM's c_in, made per-channel). Standardising the
diffusion space instead would make every dfedit edit need to know the statistics.
"""

from __future__ import annotations

import torch

from dfedit.schedule import NoiseSchedule

from .config import DiffusionConfig


class Diffusion:
    def __init__(self, cfg: DiffusionConfig, mean: list[float], std: list[float], device="cpu"):
        self.cfg = cfg
        self.schedule = NoiseSchedule.from_config(cfg.scheduler_config())
        self.abar = self.schedule.alphas_cumprod.to(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.var = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) ** 2

    @property
    def T(self) -> int:
        return self.schedule.num_train_timesteps

    def _ab(self, t: torch.Tensor) -> torch.Tensor:
        return self.abar.to(t.device)[t].view(-1, 1, 1, 1)

    def net_input(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self._ab(t)
        mean, var = self.mean.to(x_t.device), self.var.to(x_t.device)
        return ((x_t - ab.sqrt() * mean) / (ab * var + 1 - ab).sqrt()).to(x_t.dtype)

    def predict(self, net, x_t: torch.Tensor, t: torch.Tensor, text, mask) -> torch.Tensor:
        """The network's raw output (eps, v or x0 as configured)."""
        return net(self.net_input(x_t, t), t, text, mask)

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Any objective's output as a noise estimate (per-sample t; dfedit's version takes an int)."""
        ab = self._ab(t)
        p = self.cfg.prediction_type
        if p == "epsilon":
            return out
        if p == "v_prediction":
            return ab.sqrt() * out + (1 - ab).sqrt() * x_t
        return (x_t - ab.sqrt() * out) / (1 - ab).sqrt()

    def loss(self, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, text, mask) -> torch.Tensor:
        """Per-sample MSE on the configured target, min-SNR weighted if gamma > 0. Shape (B,)."""
        ab = self._ab(t)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        out = self.predict(net, x_t, t, text, mask).float()
        p = self.cfg.prediction_type
        target = noise if p == "epsilon" else (ab.sqrt() * noise - (1 - ab).sqrt() * x0 if p == "v_prediction" else x0)
        per = ((out - target) ** 2).mean(dim=(1, 2, 3))
        g = self.cfg.min_snr_gamma
        if g > 0:
            # Hang et al.: weight = min(SNR, gamma) relative to the objective's implicit SNR weighting.
            snr = (ab / (1 - ab)).flatten()
            w = torch.clamp(snr, max=g)
            w = w / snr if p == "epsilon" else (w / (snr + 1) if p == "v_prediction" else w)
            per = per * w
        return per
