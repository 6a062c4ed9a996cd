"""Images in: any input file (or PIL image, or tensor) -> a model-sized tensor, and tensors -> PIL.

Inputs of any size and mode are handled the same way: EXIF orientation applied, transparency
composited on white, 16-bit and float images scaled to 8-bit range, grayscale/CMYK/palette converted
to RGB, then the largest centred square is cropped and resized (Lanczos) to the model's size. Square
crops never squish a non-square photo; the cost is that the sides of a wide image are dropped.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DfeditError


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        if img.mode == "F" and a.max() <= 1.0:
            hi = 1.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    # "transparency" in info: a palette's tRNS, or an RGB / L colour key (PNG tRNS, GIF).
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


# The largest input read, in pixels (6000 x 6000, a 36 MP photo), checked from the file's header before
# anything is decoded: the models read at most 256 px, and a small file can claim a huge image
# (a 519 KB PNG of 13000 x 13000 decodes to 2.3 GB).
MAX_PIXELS = 36_000_000


def check_pixels(img: Image.Image, name) -> None:
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise DfeditError(f"{name} is {w} x {h} pixels, more than the {MAX_PIXELS:,} dfedit reads (the models read "
                          "at most 256 px): downscale it first")


def open_image(path: str | os.PathLike, what: str = "input image") -> Image.Image:
    """Decode fully (so truncation is caught here, not halfway through a run) and convert to RGB;
    an image above MAX_PIXELS is refused from its header, before decoding. `what` names the file in
    messages ("input image", "mask")."""
    p = Path(path)
    if not p.exists():
        raise DfeditError(f"{what} {path} does not exist")
    if p.is_dir():
        raise DfeditError(f"{what} {path} is a directory, not an image file")
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: check_pixels says it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
        with img:
            check_pixels(img, path)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise DfeditError(f"{path} is too large to load safely ({e}): downscale it first") from None
    except UnidentifiedImageError:
        raise DfeditError(f"{path} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DfeditError(f"{path} could not be decoded (truncated or corrupt: {e})") from None


def center_square(img: Image.Image, size: int, resample=Image.Resampling.LANCZOS) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), resample, reducing_gap=None)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) float32 in [-1, 1] (IF's pixel range)."""
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    return pil_to_tensor(center_square(open_image(path), size))


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images, rounded as diffusers' numpy_to_pil does."""
    a = (x.detach().float().cpu() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((im * 255).round().astype(np.uint8)) for im in a]


def image_at(image, size: int) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1] from a path, a PIL image or a tensor in [-1, 1]. A PIL image
    or tensor is only resized, so an input decoded once serves every stage's size."""
    if isinstance(image, torch.Tensor):
        x = image if image.ndim == 4 else image.unsqueeze(0)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x.float(), (size, size), mode="bicubic", antialias=True, align_corners=False)
        return x.float().clamp(-1, 1)
    img = image if isinstance(image, Image.Image) else open_image(image)
    return pil_to_tensor(center_square(img.convert("RGB"), size))


def mask_at(mask, size: int, invert: bool = False) -> torch.Tensor:
    """(1, 1, size, size) of {0, 1}: 1 (white) = regenerate, 0 (black) = keep. Nearest resize, so
    the mask stays binary; centre-cropped like the image so the two line up."""
    if isinstance(mask, torch.Tensor):
        m = mask.float().reshape(1, 1, *mask.shape[-2:])
        m = F.interpolate(m, (size, size), mode="nearest")
        m = (m > 0.5).float()
    else:
        img = mask if isinstance(mask, Image.Image) else open_image(mask, "mask")
        img = center_square(img.convert("L"), size, resample=Image.Resampling.NEAREST)
        m = (torch.from_numpy(np.asarray(img).copy()).float() > 127).float()[None, None]
    return 1 - m if invert else m
