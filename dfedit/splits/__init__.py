"""Factorizations for hybrid images (Geng et al., "Factorized Diffusion"): one file per split here.

A split turns the per-prompt noise estimates into one, `combine([e_1, ..., e_K]) = c_1(e_1) + ... +
c_K(e_K)`, where the components c_k of any image sum to that image (c_1(x) + ... + c_K(x) = x, up
to float rounding), so a model that agrees with itself is left unchanged and each prompt steers
only its own component. `gaussian` (low / high frequencies, or three bands), `color` (grayscale /
colour), `motion_blur` (a linear motion blur / what it removes) and `scaling` (the image
downsampled and upsampled / the detail that loses).

Adding a split is one file here, NAME.py, that calls `register_split(Split(...))`: the command
line lists the files without importing torch (dfedit.constants.SPLIT_NAMES).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..constants import SPLIT_NAMES
from ..errors import ParamError

Combine = Callable[[list[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Split:
    """`components(size, kernel, sigma) -> [c_1, ..., c_K]` for K prompts in `prompts`; `takes`:
    which of kernel and sigma it reads (given at 64 px, scaled with the size); `check(size,
    n_prompts, kernel, sigma)` refuses what it cannot use before any model loads."""

    name: str
    components: Callable[[int, int, int | None, float | None], list[Callable[[torch.Tensor], torch.Tensor]]]
    prompts: tuple[int, ...] = (2,)
    takes: tuple[str, ...] = ()
    check: Callable[[int, int, int | None, float | None], None] | None = None


SPLITS: dict[str, Split] = {}


def register_split(split: Split) -> Split:
    SPLITS[split.name] = split
    return split


def _split(name: str, n_prompts: int) -> Split:
    if name not in SPLITS:
        raise ParamError("split", f"{name!r} is unknown: use {', '.join(SPLITS)}")
    split = SPLITS[name]
    if n_prompts not in split.prompts:
        words = {2: "two", 3: "three"}
        n = " or ".join(words.get(k, str(k)) for k in split.prompts)
        exactly = "exactly " if len(split.prompts) == 1 else ""
        raise ParamError("split", f"{name} takes {exactly}{n} prompts, got {n_prompts}")
    return split


def check_split(name: str, size: int, n_prompts: int, kernel: int | None = None, sigma: float | None = None) -> Split:
    """Everything about a hybrid's split that can be wrong, before any model loads."""
    split = _split(name, n_prompts)
    unused = [p for p, v in (("kernel", kernel), ("sigma", sigma)) if v is not None and p not in split.takes]
    if unused:
        if not split.takes:
            raise ParamError("kernel", f"and {{sigma}} shape the Gaussian split; {{split}} {name} does not use them",
                             also=("sigma", "split"))
        raise ParamError(unused[0], f"does not apply to {{split}} {name}", also=("split",))
    if split.check is not None:
        split.check(size, n_prompts, kernel, sigma)
    return split


def frequency_split(name: str, size: int, n_prompts: int, kernel: int | None = None,
                    sigma: float | None = None) -> Combine:
    """combine(estimates) -> the sum of each estimate's own component, first prompt first, at
    `size` (kernel and sigma already scaled to it)."""
    parts = _split(name, n_prompts).components(size, n_prompts, kernel, sigma)
    return lambda es: sum((c(e) for c, e in zip(parts[1:], es[1:])), parts[0](es[0]))


def hybrid_kernel(size: int, kernel: int | None = None, sigma: float | None = None) -> tuple[int, float]:
    """The Gaussian split's kernel and sigma at `size` (see splits.gaussian)."""
    from .gaussian import hybrid_kernel as hk
    return hk(size, kernel, sigma)


for _name in SPLIT_NAMES:  # the built-in splits, one module each, registered on import
    importlib.import_module(f".{_name}", __name__)
