"""The emoji U-Net's input preconditioning: what the network sees of a noisy image x_t.

The diffusion runs in plain [-1, 1] pixel space with dfedit's `NoiseSchedule`. Per-channel data
statistics (mean m, std s, stored in the checkpoint's `data` section) enter only here, as exact
input standardisation: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps has per-channel mean sqrt(abar) m
and variance abar s^2 + 1 - abar, so the network is fed

    x_in = (x_t - sqrt(abar) m) / sqrt(abar s^2 + 1 - abar)

(zero mean, unit variance per channel at every t: EDM's c_in, made per-channel). The input is
scale-free, which is why a flow-matching model needs no special case (dfedit_train/diffusion.py).
Training (dfedit_train.diffusion.Diffusion) and inference (EmojiDenoiser) both use this class.
"""

from __future__ import annotations

import torch

from ..schedule import NoiseSchedule, noise_to


class Preconditioning:
    def __init__(self, schedule: NoiseSchedule, mean: list[float], std: list[float], device="cpu"):
        self.schedule = schedule
        self.abar = schedule.alphas_cumprod.to(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.var = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) ** 2

    @property
    def T(self) -> int:
        return self.schedule.num_train_timesteps

    def _ab(self, t: torch.Tensor) -> torch.Tensor:
        return self.abar.to(t.device)[t].view(-1, 1, 1, 1)

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t for per-sample timesteps t (dfedit.schedule.noise_to, the one forward process)."""
        return noise_to(x0, noise, self._ab(t))

    def net_input(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self._ab(t)
        mean, var = self.mean.to(x_t.device), self.var.to(x_t.device)
        return ((x_t - ab.sqrt() * mean) / (ab * var + 1 - ab).sqrt()).to(x_t.dtype)

    def predict(self, net, x_t: torch.Tensor, t: torch.Tensor, text, mask, style=None) -> torch.Tensor:
        """The network's raw output (eps, v, x0 or velocity, as its schedule's prediction_type says).
        style: the drawing-set index per sample, for models with styles (None: any style)."""
        if style is None:
            return net(self.net_input(x_t, t), t, text, mask)
        return net(self.net_input(x_t, t), t, text, mask, style=style)

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The output as a noise estimate, per-sample t (the loop's version takes an int)."""
        return self.schedule.model_output_to_eps(out, x_t, t)
