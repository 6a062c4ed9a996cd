"""scaling: the image shrunk and enlarged back (what a small copy shows) / the detail that loses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ParamError
from . import Split, register_split


def factor(size: int) -> int:
    """4 at 64 px (a 16 px thumbnail), scaled with the size: 2 at 32 px, 16 at 256 px."""
    return max(2, size // 16)


def down_up(e: torch.Tensor, k: int) -> torch.Tensor:
    """Average k x k blocks, then repeat each average over its block (nearest): a linear projection."""
    return F.avg_pool2d(e, k).repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def check(size: int, n_prompts: int, kernel: int | None, sigma: float | None) -> None:
    if size % factor(size):
        raise ParamError("split", f"scaling needs an image size divisible by {factor(size)}, got {size}")


def components(size: int, n_prompts: int, kernel: int | None = None, sigma: float | None = None):
    k = factor(size)
    return [lambda e: down_up(e, k), lambda e: e - down_up(e, k)]


register_split(Split("scaling", components, check=check))
