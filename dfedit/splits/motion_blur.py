"""motion_blur: a horizontal linear motion blur of the image / what the blur removes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ParamError
from . import Split, register_split

LENGTH = 9  # px at 64 px: the blur's streak, scaled with the image size


def length(size: int, kernel: int | None) -> int:
    n = max(1, round((LENGTH if kernel is None else kernel) * size / 64))
    return n | 1  # odd: centred on the pixel


def motion_blur(e: torch.Tensor, n: int) -> torch.Tensor:
    """The mean of n horizontally neighbouring pixels (a box along one line, reflect padding)."""
    c = e.shape[1]
    w = torch.full((c, 1, 1, n), 1.0 / n, dtype=e.dtype, device=e.device)
    return F.conv2d(F.pad(e, (n // 2, n // 2, 0, 0), mode="reflect"), w, groups=c)


def check(size: int, n_prompts: int, kernel: int | None, sigma: float | None) -> None:
    if kernel is not None and (kernel < 3 or kernel % 2 == 0):
        raise ParamError("kernel", f"is the motion blur's length at 64 px and must be odd and at least 3, got {kernel}")
    if length(size, kernel) // 2 >= size or length(size, kernel) < 3:
        raise ParamError("kernel", f"{kernel} gives no usable motion blur at the model's {size} px")


def components(size: int, n_prompts: int, kernel: int | None = None, sigma: float | None = None):
    n = length(size, kernel)
    return [lambda e: motion_blur(e, n), lambda e: e - motion_blur(e, n)]


register_split(Split("motion_blur", components, takes=("kernel",), check=check))
