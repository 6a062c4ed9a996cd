"""Views for visual anagrams: orthogonal pixel transforms (permutations and sign flips).

Only such transforms keep i.i.d. Gaussian noise i.i.d. Gaussian, which is what lets one denoiser
work on every view at once (Geng et al., "Visual Anagrams"); blurs, interpolated rotations or colour
changes do not, so they are not offered. Every view is checked when it is made:
inverse(view(x)) == x exactly, and the multiset of |values| is unchanged (a permutation or sign
flip is norm-preserving). Permutation views are seeded, and scale with the image size, so stage II
moves the same regions as stage I.

Adding a view is one file here, NAME.py, that calls `register_view("NAME", ...)`: the command line
lists the files without importing torch (dfedit.constants.VIEW_NAMES). This file holds what
several views share: the base class, rotations, and pixel permutations built from tiles.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from ..constants import VIEW_NAMES
from ..errors import DfeditError, ParamError


class View:
    name = "identity"
    negates = False  # negate's inverse acts on the noise channels only, not the variance

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed = size, seed

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse_variance(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.negates else self.inverse(v)


class Rotate(View):
    def __init__(self, size, seed=0, k=1, name="rotate_ccw"):
        super().__init__(size, seed)
        self.k, self.name = k, name

    def apply(self, x):
        return torch.rot90(x, self.k, dims=(-2, -1))

    def inverse(self, x):
        return torch.rot90(x, -self.k, dims=(-2, -1))


class PixelPermutation(View):
    """Any fixed permutation of the H*W pixel positions (the same for every channel)."""

    def __init__(self, size: int, perm: torch.Tensor, name: str, seed: int = 0):
        super().__init__(size, seed)
        self.perm, self.inv, self.name = perm, torch.argsort(perm), name

    def _take(self, x, idx):
        return x.flatten(-2)[..., idx.to(x.device)].unflatten(-1, (self.size, self.size))

    def apply(self, x):
        return self._take(x, self.perm)

    def inverse(self, x):
        return self._take(x, self.inv)


def _tiles(pos: torch.Tensor, tile: int) -> torch.Tensor:
    g = pos.shape[0] // tile
    return pos.reshape(g, tile, g, tile).transpose(1, 2).reshape(g * g, tile, tile)


def _untile(tiles: torch.Tensor, size: int) -> torch.Tensor:
    tile = tiles.shape[-1]
    g = size // tile
    return tiles.reshape(g, g, tile, tile).transpose(1, 2).reshape(size, size)


def patch_permute(size: int, seed: int, tile: int, name: str = "patch_permute", rotate: bool = False) -> View:
    """Shuffle square tiles (seeded); with rotate=True also turn each tile by a seeded multiple of
    90 degrees, so the pieces must be turned as well as moved, like a jigsaw."""
    if size % tile:
        raise DfeditError(f"view {name} needs an image size divisible by {tile}, got {size}")
    g = torch.Generator().manual_seed(seed)
    tiles = _tiles(torch.arange(size * size).view(size, size), tile)
    tiles = tiles[torch.randperm(tiles.shape[0], generator=g)]
    if rotate:
        ks = torch.randint(0, 4, (tiles.shape[0],), generator=g)
        tiles = torch.stack([torch.rot90(t, int(k)) for t, k in zip(tiles, ks)])
    return PixelPermutation(size, _untile(tiles, size).flatten(), name, seed)


VIEWS: dict[str, Callable[[int, int], View]] = {"identity": View}  # name -> (size, seed) -> View


def register_view(name: str, make: Callable[[int, int], View]) -> None:
    """Offer a view by name (`--view NAME`, `anagram(views=[...])`); `make(size, seed)` builds it,
    and `make_view` checks it is an exact, norm-preserving permutation every time it is made."""
    VIEWS[name] = make


def check_views(views: list[str], offered=None) -> None:
    """Every view name must be known (`offered`: the names to suggest; default all)."""
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise ParamError("view", f"{bad[0]!r} is unknown: choose from {', '.join(offered or VIEWS)}")


def make_view(name: str, size: int, seed: int = 0, base: int | None = None) -> View:
    """The view `name` for images of `size` px, checked exactly invertible and norm-preserving.

    `base`: the stage I size when `size` is a later stage's (IF's stage II: 64 -> 256). The view
    must then move the upsampled image as the stage I view moves the stage I image, or stage II
    would sharpen a different picture from the one stage I drew: a view that does so at its own
    size (flip, the rotations, negate, tiles that scale) is kept; a pixel permutation that does not
    (pixel_permute, skew, the inner circle's rim) becomes its stage I permutation lifted to blocks;
    anything else is refused. Checked here, every time, like invertibility."""
    check_views([name])
    view = VIEWS[name](size, seed)
    check_view(view, size)
    if base is None or base == size:
        return view
    if size % base:
        raise DfeditError(f"view {name} at {size} px cannot follow its {base} px view: {size} is not a multiple of {base}")
    small = VIEWS[name](base, seed)
    check_view(small, base)
    if not follows(view, small) and isinstance(small, PixelPermutation):
        view = lifted(small, size)
    check_stage(view, small)
    return view


def upsample(x: torch.Tensor, k: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by a whole factor: every pixel becomes a k x k block."""
    return x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def follows(view: View, small: View) -> bool:
    """Whether view(up(x)) == up(small(x)) exactly, on a random x at the small view's size."""
    k = view.size // small.size
    x = torch.randn(2, 3, small.size, small.size, generator=torch.Generator().manual_seed(4321))
    return torch.equal(view.apply(upsample(x, k)), upsample(small.apply(x), k))


def check_stage(view: View, small: View) -> None:
    if not follows(view, small):
        raise DfeditError(f"view {view.name} at {view.size} px does not move the upsampled image as its "
                          f"{small.size} px view moves the image: a stage II result would lose the illusion")


def lifted(small: PixelPermutation, size: int) -> PixelPermutation:
    """`small`'s permutation at `size` = k * small.size px: every k x k block moves where its stage I
    pixel moves, its pixels keeping their places inside it."""
    n, k = small.size, size // small.size
    rows = torch.arange(size).view(-1, 1).expand(size, size)
    cols = torch.arange(size).view(1, -1).expand(size, size)
    src = small.perm.to(torch.long)[(rows // k) * n + cols // k]  # the stage I pixel each block comes from
    perm = ((src // n) * k + rows % k) * size + (src % n) * k + cols % k
    return PixelPermutation(size, perm.flatten(), small.name, small.seed)


def check_view(view: View, size: int) -> None:
    """Exact invertibility and norm preservation, checked on a random tensor every time a view is made."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1234))
    y = view.apply(x)
    if y.shape != x.shape or not torch.equal(view.inverse(y), x):
        raise DfeditError(f"view {view.name} is not exactly invertible at {size} px")
    if not torch.equal(y.abs().flatten().sort().values, x.abs().flatten().sort().values):
        raise DfeditError(f"view {view.name} does not preserve the noise norm at {size} px")


for _name in VIEW_NAMES:  # the built-in views, one module each, registered on import
    importlib.import_module(f".{_name}", __name__)
