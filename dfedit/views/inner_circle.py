"""inner_circle: a disc in the middle turned a quarter turn clockwise, the rim around it still."""

from __future__ import annotations

import torch

from . import PixelPermutation, View, register_view

RADIUS = 3 / 8  # of the image's side: a disc three quarters as wide as the image


def inner_circle(size: int, seed: int = 0) -> View:
    """The pixels whose centres lie within RADIUS * size of the image centre, turned by 90 degrees
    about it; the disc maps onto itself exactly (its test is symmetric under the quarter turn), so
    this is a permutation at every size. At a stage II size the disc's staircase edge would not
    follow stage I's, so make_view lifts the stage I permutation to blocks there."""
    idx = torch.arange(size * size).view(size, size)
    c = (size - 1) / 2
    r2 = (torch.arange(size, dtype=torch.float64) - c) ** 2
    disc = (r2.view(-1, 1) + r2.view(1, -1)) <= (RADIUS * size) ** 2
    turned = torch.rot90(idx, -1)  # at each place, the index of the pixel a clockwise turn brings there
    return PixelPermutation(size, torch.where(disc, turned, idx).flatten(), "inner_circle", seed)


register_view("inner_circle", inner_circle)
