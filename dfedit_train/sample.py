"""The trained U-Net as a dfedit `Denoiser`, and grid sampling through dfedit's one loop.

Nothing here iterates over timesteps: validation grids, `eval` samples and `dfedit sample --model
CKPT` all go through `dfedit.sampler.denoise_loop` with the `cfg` combinator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfedit.denoiser import Cond
from dfedit.images import save_png
from dfedit.progress import progress_bar
from dfedit.sampler import cfg as cfg_guidance
from dfedit.sampler import denoise_loop, randn

from .config import DiffusionConfig, from_dict
from .diffusion import Diffusion
from .text import CaptionEncoder


class EmojiDenoiser:
    """Implements dfedit.denoiser.Denoiser: (x_t, t, cond) -> (eps, None); fixed variance."""

    channels = 3

    def __init__(self, net, diffusion: Diffusion, prompt_encoder, sample_size: int, name: str, device, dtype):
        self.device, self.dtype = torch.device(device), dtype
        # Convert the weights once: cheaper than autocast re-casting them on every call.
        self.net = net.to(device=self.device, dtype=dtype).eval()
        self.diffusion = diffusion
        self.schedule = diffusion.schedule
        self.prompt_encoder = prompt_encoder
        self.sample_size, self.name = sample_size, name

    @classmethod
    def from_config(cls, net, cfg: dict, name: str, device="cpu", dtype=torch.float32,
                    cache_dir=None) -> "EmojiDenoiser":
        d = cfg["data"]
        diff = Diffusion(from_dict(DiffusionConfig, cfg["diffusion"]), d["mean"], d["std"], device)
        pe = CaptionEncoder(cfg["text_encoder"]["name"], cfg["text_encoder"]["max_length"],
                            cfg["model"]["text_dim"], device, dtype, cache_dir=cache_dir)
        den = cls(net, diff, pe, cfg["model"]["image_size"], name, device, dtype)
        # dfedit uses this when --cfg is not given: the scale the run's validation grids used.
        den.default_cfg = float(cfg.get("train", {}).get("guidance", 3.0))
        return den

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, t: int, cond: Cond):
        b = x.shape[0]
        tt = torch.full((b,), int(t), device=self.device, dtype=torch.long)
        mask = cond.text_mask if cond.text_mask is not None else torch.ones(cond.text.shape[:2], dtype=torch.bool)
        out = self.diffusion.predict(self.net, x.to(self.device, self.dtype), tt,
                                     cond.text.to(self.device, self.dtype), mask.to(self.device))
        eps = self.schedule.model_output_to_eps(out.float(), x.float(), int(t))
        return eps.to(x.dtype), None


def sample(denoiser, prompts: list[str], seed: int = 0, stride: int = 20, guidance: float = 3.0,
           progress: bool = False, cond: Cond | None = None) -> torch.Tensor:
    """Strided DDPM with CFG from seeded noise; images in [-1, 1], (B, 3, S, S) float32 on CPU."""
    cond = cond if cond is not None else denoiser.prompt_encoder.encode(prompts)
    uncond = denoiser.prompt_encoder.encode([""] * len(prompts))
    gen = torch.Generator("cpu").manual_seed(seed)
    s = denoiser.sample_size
    x = randn((len(prompts), 3, s, s), gen, denoiser.device, torch.float32)
    timesteps = denoiser.schedule.strided_timesteps(stride)
    eps_fn = cfg_guidance(denoiser, cond, uncond, guidance)
    with progress_bar(len(timesteps), "sampling", enabled=progress) as bar:
        x = denoise_loop(eps_fn, x, timesteps, denoiser.schedule, gen, progress=bar)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(img, path, params)  # dfedit's writer: atomic, same metadata layout as every output
