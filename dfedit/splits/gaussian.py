"""gaussian: low / high frequencies (the course's hybrid image), or three bands with three prompts."""

from __future__ import annotations

from ..errors import ParamError
from ..filters import gaussian_blur
from . import Split, register_split


def hybrid_kernel(size: int, kernel: int | None = None, sigma: float | None = None) -> tuple[int, float]:
    """Kernel 33 / sigma 2 at 64 px, scaled with the image size (133 / 8 at 256 px), kernel kept odd."""
    scale = size / 64
    if kernel is None:
        kernel = max(1, round(33 * scale))
        kernel += kernel % 2 == 0
    if sigma is None:
        sigma = 2.0 * scale
    return int(kernel), float(sigma)


def check_hybrid_kernel(kernel: int | None, sigma: float | None, size: int, n_prompts: int = 2) -> None:
    """--kernel / --sigma are given at 64 px: each must be usable as given and after scaling to the
    model's size (an even or 1-tap kernel would be silently changed or blur nothing)."""
    from ..filters import check_blur
    if kernel is not None:
        check_blur(kernel, 2.0 if sigma is None else sigma, 64, "kernel", "sigma",
                   "the 64 px scale it is given at")
    if sigma is not None:
        check_blur(33, sigma, 64, "kernel", "sigma")
    f = size / 64
    k = None if kernel is None else max(1, round(kernel * f)) | 1
    s = None if sigma is None else sigma * f
    k1, s1 = hybrid_kernel(size, k, s)
    what = f" ({{kernel}} {kernel} at 64 px is {k1} at the model's {size} px)" if kernel is not None else ""
    if k1 < 3:
        raise ParamError("kernel", f"{kernel} scales to a {k1}-tap blur at the model's {size} px, which blurs "
                         "nothing: use a larger {kernel}")
    if k1 // 2 >= size or (n_prompts == 3 and hybrid_kernel(size, None if k is None else 2 * k + 1)[0] // 2 >= size):
        raise ParamError("kernel", f"{kernel} is too large for the model's {size} px images{what}")


def components(size: int, n_prompts: int, kernel: int | None = None, sigma: float | None = None):
    """Two prompts: low(x) and x - low(x). Three: coarse(x), low(x) - coarse(x) and x - low(x), where
    coarse blurs with twice the sigma: three bands that sum to the image."""
    k, s = hybrid_kernel(size, kernel, sigma)

    def low(e):
        return gaussian_blur(e, k, s)

    if n_prompts == 2:
        return [low, lambda e: e - low(e)]
    k2, s2 = hybrid_kernel(size, None if kernel is None else 2 * kernel + 1, 2 * s)

    def coarse(e):
        return gaussian_blur(e, k2, s2)

    return [coarse, lambda e: low(e) - coarse(e), lambda e: e - low(e)]


register_split(Split("gaussian", components, prompts=(2, 3), takes=("kernel", "sigma"),
                     check=lambda size, n, kernel, sigma: check_hybrid_kernel(kernel, sigma, size, n)))
