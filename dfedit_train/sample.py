"""Grid sampling of a trained U-Net (a dfedit.emoji.EmojiDenoiser) through dfedit's one loop.

Nothing here iterates over timesteps: validation grids, `eval` samples and `dfedit sample --model
CKPT` all go through `dfedit.sampler.denoise_loop` with the `cfg` combinator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfedit.denoiser import Cond
from dfedit.errors import DfeditError
from dfedit.outputs import save_png
from dfedit.progress import progress_bar
from dfedit.sampler import cfg as cfg_guidance
from dfedit.sampler import DEFAULT_SAMPLER, denoise_loop, plan_timesteps, randn



def sample(denoiser, prompts: list[str], seed: int = 0, stride: int = 20, guidance: float = 3.0,
           progress: bool = False, cond: Cond | None = None, sampler: str | None = None,
           steps: int | None = None) -> torch.Tensor:
    """CFG from seeded noise with any of dfedit's samplers (default strided DDPM; `steps` = model
    calls instead of a stride); images in [-1, 1], (B, 3, S, S) float32 on CPU."""
    cond = cond if cond is not None else denoiser.prompt_encoder.encode(prompts)
    uncond = denoiser.prompt_encoder.encode([""] * len(prompts))
    gen = torch.Generator("cpu").manual_seed(seed)
    s = denoiser.sample_size
    x = randn((len(prompts), 3, s, s), gen, denoiser.device, torch.float32)
    sampler = sampler or DEFAULT_SAMPLER
    timesteps = plan_timesteps(denoiser.schedule, sampler, stride=None if steps else stride, steps=steps)
    eps_fn = cfg_guidance(denoiser, cond, uncond, guidance)
    with progress_bar(len(timesteps), "sampling", enabled=progress) as bar:
        x = denoise_loop(eps_fn, x, timesteps, denoiser.schedule, gen, progress=bar, sampler=sampler)
    return x.float().cpu().clamp(-1, 1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(images: np.ndarray, path: Path, params: dict, ncol: int = 8, scale: int = 1) -> Path:
    """Tile (B, H, W, 3) uint8 into one PNG that carries its parameters as PNG text metadata."""
    b, h, w, _ = images.shape
    ncol = min(ncol, b)
    nrow = -(-b // ncol)
    grid = np.full((nrow * (h + 2) + 2, ncol * (w + 2) + 2, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = im
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # OUT/samples is a file, or cannot be made
        raise DfeditError(f"cannot write {path}: {path.parent} is not a directory"
                          if path.parent.exists() else f"cannot write {path}: {e.strerror or e}") from None
    return save_png(img, path, params)  # dfedit's writer: atomic, same metadata layout as every output


class NullOnlyEncoder:
    """Prompt encoder for in-training grids: prompts arrive pre-embedded; only "" is ever encoded."""

    def __init__(self, dim: int, length: int, device):
        self.dim, self.length, self.device = dim, length, device

    def encode(self, prompts: list[str]) -> Cond:
        if any(prompts):
            raise ValueError("validation grids pass their conditioning in directly")
        b = len(prompts)
        return Cond(text=torch.zeros(b, self.length, self.dim, device=self.device),
                    text_mask=torch.zeros(b, self.length, dtype=torch.bool, device=self.device))
