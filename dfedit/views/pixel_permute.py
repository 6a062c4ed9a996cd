"""pixel_permute: every pixel moved to a seeded random place."""

from __future__ import annotations

import torch

from . import PixelPermutation, View, register_view

def pixel_permute(size: int, seed: int) -> View:
    perm = torch.randperm(size * size, generator=torch.Generator().manual_seed(seed))
    return PixelPermutation(size, perm, "pixel_permute", seed)


register_view("pixel_permute", pixel_permute)
