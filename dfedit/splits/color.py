"""color: grayscale / colour (factorized diffusion's colour hybrid)."""

from __future__ import annotations

from . import Split, register_split


def gray(e):
    """The mean over the channels, in every channel: the grayscale component."""
    return e.mean(dim=1, keepdim=True).expand_as(e)


register_split(Split("color", lambda size, n, kernel, sigma: [gray, lambda e: e - gray(e)]))
