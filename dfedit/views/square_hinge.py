"""square_hinge: the image cut into 3 x 3 squares, each turned a quarter turn, neighbours the other way."""

from __future__ import annotations

import torch

from . import PixelPermutation, View, register_view


def square_hinge(size: int, seed: int = 0) -> View:
    """Squares of size // 3 px in a 3 x 3 grid (centred: the one or two rows and columns left over
    at sizes not divisible by 3 stay where they are), square (i, j) turned by +90 degrees when i + j
    is even and -90 degrees when odd, like the hinged squares of a dissection puzzle."""
    side = size // 3
    if side < 1:
        raise ValueError(f"square_hinge needs at least 3 px, got {size}")
    o = (size - 3 * side) // 2
    idx = torch.arange(size * size).view(size, size)
    out = idx.clone()
    for i in range(3):
        for j in range(3):
            rs, cs = slice(o + i * side, o + (i + 1) * side), slice(o + j * side, o + (j + 1) * side)
            out[rs, cs] = torch.rot90(idx[rs, cs], 1 if (i + j) % 2 == 0 else -1)
    return PixelPermutation(size, out.flatten(), "square_hinge", seed)


register_view("square_hinge", square_hinge)
