"""skew: each column rolled vertically by an amount growing across the image."""

from __future__ import annotations

import torch

from . import PixelPermutation, View, register_view

def skew(size: int, seed: int = 0, factor: float = 1.5) -> View:
    """Roll each column vertically by an amount growing across the image (a shear on a torus)."""
    shifts = ((torch.arange(size) - size / 2) * factor).round().long()
    rows = (torch.arange(size).view(-1, 1) - shifts.view(1, -1)) % size
    return PixelPermutation(size, (rows * size + torch.arange(size).view(1, -1)).flatten(), "skew", seed)


register_view("skew", skew)
