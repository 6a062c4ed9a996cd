"""Outputs for people: grids with labels, display copies, and PNGs that say how they were made.

Every output PNG carries its parameters (`png_metadata`: one text chunk per key, and all of it as
JSON under `dfedit`) and is written atomically (`dfedit.files`), so a killed run leaves no
half-written file. The CLI's output naming (dfedit-COMMAND[-N].png, never replacing a file) lives
here too, beside the checks that keep every output off its inputs.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from .files import atomic_write, write_error
from .errors import DfeditError, ParamError


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


def png_metadata(meta: dict, command_line: str | None = None) -> dict:
    """The metadata of an output PNG: the run's parameters, the command line (CLI only) and the
    dfedit version. One function, so the CLI's files and `Result.save`'s say the same."""
    from . import __version__
    return {**meta, **({"command_line": command_line} if command_line is not None else {}),
            "dfedit_version": __version__}


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


# ---- where outputs go, and how they are written ---------------------------------------------------

# Outputs named for the user (no --out) -> (command, number): saved without replacing anyone's file.
_AUTO_NAMED: dict[Path, tuple[str, int]] = {}


def _say(line: str, quiet: bool) -> None:
    if not quiet:
        print(line, file=sys.stderr)


def _numbered(command: str, start: int = 0):
    for i in itertools.count(start):
        yield i, Path(f"dfedit-{command}.png" if i == 0 else f"dfedit-{command}-{i}.png")


def _free(p: Path) -> bool:
    return not p.exists() and not display_path(p).exists()


def out_path(out: str | None, command: str) -> Path:
    """--out, or the first free dfedit-COMMAND[-N].png (checked now, claimed when saving); a name
    is free when neither it nor its display copy exists."""
    if out is not None:
        return check_output(out)
    i, p = next((i, p) for i, p in _numbered(command) if _free(p))
    _AUTO_NAMED[p] = (command, i)
    return check_output(p)


def gif_path(trajectory: str | None) -> Path | None:
    """A --trajectory path checked up front, like --out."""
    return None if trajectory is None else check_output(trajectory, ".gif", "trajectory")


def protect_inputs(out: Path, gif: Path | None, inputs, display: bool = True) -> None:
    """No output may replace an input file (an image or mask), however it is spelled or linked."""
    for inp in inputs:
        inp = Path(inp)
        for flag, o in (("out", out), ("trajectory", gif)):
            if o is not None and same_file(Path(o), inp):
                raise ParamError(flag, f"{o} is the input file {inp}: dfedit never overwrites its input; "
                                 f"choose another {{{flag}}}")
        if display and same_file(display_path(Path(out)), inp):
            raise ParamError("out", f"{out} would put its display copy {display_path(Path(out))} over the input "
                             f"file {inp}: choose another {{out}}, or pass {{no_display}}", also=("no_display",))


def save(img: Image.Image, path: Path, meta: dict, quiet: bool, display=None, command_line: str | None = None) -> Path:
    """Write `img` with its metadata; `display` = (image, how it was made) also writes the display
    copy beside the final name. Returns the path written."""
    meta = png_metadata(meta, command_line=command_line)
    if path not in _AUTO_NAMED:
        save_png(img, path, meta)
    else:  # a run started beside this one may have taken the name meanwhile: take the next free one
        for _, path in _numbered(*_AUTO_NAMED[path]):
            if display is not None and display_path(path).exists():
                continue
            try:
                save_png(img, path, meta, exclusive=True)
                break
            except FileExistsError:
                continue
    _say(f"wrote {path} ({img.width}x{img.height})", quiet)
    if display is not None:
        dimg, how = display
        dpath = display_path(path)
        save_png(dimg, dpath, {**meta, "display": {**how, "of": str(path)}})
        _say(f"wrote {dpath} ({dimg.width}x{dimg.height}, a display copy)", quiet)
    return path


def save_single(img: Image.Image, path: Path, meta: dict, quiet: bool, want_display: bool | None, panels=None,
                always: bool = False, outlined=(), command_line: str | None = None) -> Path:
    """One result at the model's native size (what the next command reads), plus its display copy
    when asked for or by default (images under GRID_TILE px; `always` for inpaint): the image enlarged
    to at least DISPLAY_SIZE px, or the labelled `panels` [(tile, label), ...] that put it in context."""
    want = want_display if want_display is not None else (img.width < GRID_TILE or always)
    display = None
    if want:
        if panels:
            rows, labels = [[t for t, _ in panels]], [[lab for _, lab in panels]]
            display = grid(rows, labels, outlined=outlined), {**grid_meta(rows), "panels": labels[0]}
        else:
            k = enlarge_factor(img.width, DISPLAY_SIZE)
            display = enlarge(img, k), display_meta(img.width, k)
    return save(img, path, meta, quiet, display, command_line)


def save_sheet(path: Path, rows, labels, meta: dict, quiet: bool, outlined=(), command_line: str | None = None) -> Path:
    """A labelled grid (tiles enlarged to at least GRID_TILE px), recording its enlargement."""
    return save(grid(rows, labels, outlined=outlined), path, {**meta, "display": grid_meta(rows)}, quiet,
                command_line=command_line)


def numbered_labels(base: str, n: int) -> list[str]:
    return [base] if n == 1 else [f"{base} #{k + 1}" for k in range(n)]
