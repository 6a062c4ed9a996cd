"""Images in and out: any input file -> model-sized tensor; tensors -> PNGs that say how they were made.

Inputs of any size and mode are handled the same way: EXIF orientation applied, transparency
composited on white, 16-bit and float images scaled to 8-bit range, grayscale/CMYK/palette converted
to RGB, then the largest centred square is cropped and resized (Lanczos) to the model's size. Square
crops never squish a non-square photo; the cost is that the sides of a wide image are dropped.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin, UnidentifiedImageError

from .files import atomic_write, write_error
from .errors import DfeditError, ParamError


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


# How outputs are shown to a person: a 32 px emoji is a dot in an image viewer. Grids and GIFs
# show every tile at least GRID_TILE px wide, and a single image below DISPLAY_SIZE px gets a display
# copy at least DISPLAY_SIZE px wide; both enlarge by a whole factor with nearest-neighbour, so every
# model pixel becomes a square block (no invented detail), and say so in their metadata.
GRID_TILE = 128
DISPLAY_SIZE = 256
RESAMPLE = "nearest"


def enlarge_factor(size: int, minimum: int) -> int:
    """The smallest whole factor that makes `size` at least `minimum` (1 when it already is)."""
    return max(1, -(-minimum // max(1, size)))


def enlarge(img: Image.Image, factor: int) -> Image.Image:
    if factor == 1:
        return img
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def display_meta(native: int, factor: int) -> dict:
    """What a display copy or grid records about its enlargement."""
    return {"native_px": native, "shown_px": native * factor, "scale": factor, "resample": RESAMPLE}


def wrap(tiles: list[Image.Image], labels: list[str] | None = None, ncol: int = 8):
    """One list of tiles as rows of at most ncol (and the labels alike)."""
    rows = [tiles[i:i + ncol] for i in range(0, len(tiles), ncol)]
    return rows, (None if labels is None else [labels[i:i + ncol] for i in range(0, len(labels), ncol)])


OUTLINE = (128, 128, 128)  # the frame of an `outlined` grid tile: visible on white and on black


def grid(rows: list[list[Image.Image]], labels: list[list[str]] | None = None, pad: int = 2,
         min_tile: int = GRID_TILE, outlined=()) -> Image.Image:
    """Tiles in rows with optional captions below, on white. Every tile is shown at the largest
    tile's size times enlarge_factor(that, min_tile) (nearest-neighbour), so a grid of 32 px emoji
    shows 128 px tiles and one of 256 px IF images shows them as they are. `outlined`: (row, column)
    of tiles framed by a grey 1 px line in the gap around them (an inpainting mask, whose white
    would vanish into the page); the tile's own pixels are untouched."""
    native = max(max(im.size) for row in rows for im in row)
    size = native * enlarge_factor(native, min_tile)
    font = ImageFont.load_default()
    label_h = 14 if labels else 0
    ncols = max(len(r) for r in rows)
    W = ncols * size + (ncols + 1) * pad
    H = len(rows) * (size + label_h) + (len(rows) + 1) * pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            x, y = pad + c * (size + pad), pad + r * (size + label_h + pad)
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.NEAREST)
            canvas.paste(im, (x, y))
            if (r, c) in outlined and pad > 0:
                draw.rectangle((x - 1, y - 1, x + size, y + size), outline=OUTLINE, width=1)
            if labels and labels[r][c]:
                text = labels[r][c]
                while len(text) > 1 and draw.textlength(text, font=font) > size - 4:
                    text = text[:-2] + "…"
                draw.text((x + 2, y + size + 1), text, fill=(0, 0, 0), font=font)
    return canvas


def grid_meta(rows: list[list[Image.Image]], min_tile: int = GRID_TILE) -> dict:
    native = max(max(im.size) for row in rows for im in row)
    return display_meta(native, enlarge_factor(native, min_tile))


def check_output(path: str | os.PathLike, suffix: str = ".png", param: str = "out") -> Path:
    """Fail before any work is done if the output cannot be written."""
    if not str(path).strip():
        raise ParamError(param, f"is empty: give a file name ending in {suffix}")
    p = Path(path).expanduser()
    if p.suffix.lower() != suffix:
        raise ParamError(param, f"{path} must end in {suffix}")
    if p.is_dir():
        raise ParamError(param, f"{path} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise DfeditError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise DfeditError(f"cannot write {path}: permission denied")
    return p


def same_file(a: Path, b: Path) -> bool:
    """Whether writing `a` would replace the file `b` (same path, or a link to it)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def display_path(path: Path) -> Path:
    """Where the display copy of `path` goes: x.png -> x.display.png."""
    return path.with_name(path.stem + ".display.png")


def save_png(img: Image.Image, path: str | os.PathLike, meta: dict, exclusive: bool = False) -> Path:
    """Atomic PNG write with every parameter in text chunks (one key each, plus all of it as JSON).
    exclusive: raise FileExistsError rather than replace an existing file."""
    p = check_output(path)
    info = PngImagePlugin.PngInfo()
    for k, v in meta.items():
        info.add_text(k, v if isinstance(v, str) else json.dumps(v))
    info.add_text("dfedit", json.dumps(meta, sort_keys=True))
    buf = io.BytesIO()  # encoded first: a failed write can then say how much space it needed
    img.save(buf, format="PNG", pnginfo=info)
    data = buf.getvalue()
    try:
        atomic_write(p, data, exclusive=exclusive)
    except FileExistsError:
        raise
    except OSError as e:
        raise write_error(e, "the image", path, len(data)) from None
    return p


def read_metadata(path: str | os.PathLike) -> dict:
    with Image.open(path) as img:
        return json.loads(img.text["dfedit"])
