"""Separable Gaussian blur (the denoising baseline now, the hybrid-image low-pass later)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import DfeditError, ParamError


def check_blur(kernel_size: int, sigma: float, size: int, kernel_param: str = "blur_kernel",
               sigma_param: str = "blur_sigma", where: str | None = None) -> None:
    """A Gaussian blur's parameters for a size x size image: an odd kernel of 3 or more taps (1 tap
    would blur nothing) whose half-width fits inside the image, a finite positive sigma. The
    parameters' names are the caller's (a CLI shows them as its flags)."""
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ParamError(kernel_param, f"must be an odd number of at least 3, got {kernel_size}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise ParamError(sigma_param, f"must be a positive number, got {sigma}")
    if kernel_size // 2 >= size:
        where = where or f"the model's {size} px images"
        raise ParamError(kernel_param, f"{kernel_size} is too large for {where} (at most {2 * size - 1})")


def gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise DfeditError(f"blur kernel size must be a positive odd number, got {kernel_size}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise DfeditError(f"blur sigma must be positive, got {sigma}")
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Depthwise blur with reflect padding (torchvision's convention), in x's dtype and device."""
    k = gaussian_kernel1d(kernel_size, sigma).to(device=x.device, dtype=x.dtype)
    c = x.shape[1]
    pad = kernel_size // 2
    if pad >= min(x.shape[-2:]):
        raise DfeditError(f"blur kernel {kernel_size} is too large for a {x.shape[-1]} px image")
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
