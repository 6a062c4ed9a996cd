"""`--trajectory out.gif`: the x0 estimates the loop produced, as an animation.

Frames are recorded by a loop callback (pipeline._recorder) every few reverse steps, in both
stages; here they become one GIF with the PNG grids' tile size (at least 128 px, stage I frames and
small models enlarged with nearest-neighbour so they stay crisp). Written atomically like every output.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from PIL import Image

from .files import atomic_write, write_error
from .errors import DfeditError
from .images import to_pil
from .outputs import GRID_TILE, check_output, display_meta, enlarge_factor, grid, wrap


def save_trajectory(frames: list[torch.Tensor], path: str | Path, meta: dict, duration_ms: int = 120) -> Path:
    if not frames:
        raise DfeditError("no trajectory frames were recorded")
    p = check_output(path, ".gif", "trajectory")
    native = max(f.shape[-1] for f in frames)
    size = native * enlarge_factor(native, GRID_TILE)  # the tile size of the PNG grids
    images = []
    for f in frames:
        tiles = [im.resize((size, size), Image.Resampling.NEAREST) for im in to_pil(f)]
        images.append(tiles[0] if len(tiles) == 1 else grid(wrap(tiles)[0]))
    meta = {**meta, "display": display_meta(native, size // native)}
    images += [images[-1]] * 5  # hold the final frame
    comment = json.dumps(meta, sort_keys=True).encode("utf-8")
    buf = io.BytesIO()  # encoded first: a failed write can then say how much space it needed
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0,
                   comment=comment)
    data = buf.getvalue()
    try:
        atomic_write(p, data)
    except OSError as e:
        raise write_error(e, "the trajectory", path, len(data)) from None
    return p
