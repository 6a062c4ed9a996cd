"""A trained emoji U-Net as a dfedit `Denoiser`, so every edit runs on it through the one loop.

`diffusion` is the preconditioned network's wrapper (precondition.Preconditioning; the trainer hands
in its Diffusion, a subclass, for validation grids): x_t -> network input -> raw output -> eps.
"""

from __future__ import annotations

import torch

from ..denoiser import Cond
from .config import schedule_of
from .precondition import Preconditioning
from .text import CaptionEncoder


def check_style(styles: tuple[str, ...], style: str | None, model: str) -> int:
    """The 1-based index of `style` among a model's drawing sets (0 for None); one sentence otherwise."""
    from ..errors import ParamError

    if style is None:
        return 0
    if not styles:
        raise ParamError("style", f"asks for a drawing set, and the model {model} was trained without styles: "
                                  "leave out {style}")
    if style not in styles:
        raise ParamError("style", f"must be one of the model's drawing sets ({', '.join(styles)}), got {style!r}")
    return styles.index(style) + 1


class EmojiDenoiser:
    """Implements dfedit.denoiser.Denoiser: (x_t, t, cond) -> (eps, None); fixed variance."""

    channels = 3

    def __init__(self, net, diffusion: Preconditioning, prompt_encoder, sample_size: int, name: str, device, dtype):
        self.device, self.dtype = torch.device(device), dtype
        # Convert the weights once: cheaper than autocast re-casting them on every call.
        self.net = net.to(device=self.device, dtype=dtype).eval()
        self.diffusion = diffusion
        self.schedule = diffusion.schedule
        self.prompt_encoder = prompt_encoder
        self.sample_size, self.name = sample_size, name
        self.styles: tuple[str, ...] = tuple(getattr(getattr(net, "cfg", None), "styles", ()) or ())
        self.style = 0  # index into styles, 1-based; 0: any style

    def set_style(self, style: str | None) -> None:
        """Draw in one of the model's drawing sets from now on (None: any style, seeds vary across them)."""
        self.style = check_style(self.styles, style, self.name)

    @classmethod
    def from_config(cls, net, cfg: dict, name: str, device="cpu", dtype=torch.float32,
                    cache_dir=None) -> "EmojiDenoiser":
        d = cfg["data"]
        schedule = schedule_of(cfg)
        diff = Preconditioning(schedule, d["mean"], d["std"], device)
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
        style = torch.full((b,), self.style, device=self.device, dtype=torch.long) if self.styles else None
        out = self.diffusion.predict(self.net, x.to(self.device, self.dtype), tt,
                                     cond.text.to(self.device, self.dtype), mask.to(self.device), style=style)
        eps = self.schedule.model_output_to_eps(out.float(), x.float(), int(t))
        return eps.to(x.dtype), None
