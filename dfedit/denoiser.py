"""The denoiser protocol: what the one loop needs from a model, and nothing more.

A denoiser maps (noisy image x_t, integer timestep t, conditioning) to a noise estimate and, for
models that learn it (IF), the raw learned-range variance channels. It also carries its noise
schedule and a prompt encoder. IF stage I, IF stage II and the emoji U-Net all implement it, so
every edit (CFG, views, frequency splits, inpainting) runs unchanged on each of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Protocol, runtime_checkable

import torch

from .schedule import NoiseSchedule

# (x_t, t) -> (eps, raw variance or None): what the loop calls each step. Combinators (CFG, views,
# frequency splits) build one of these around a Denoiser and its conditioning.
EpsFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass
class Cond:
    """Per-sample conditioning, every field batched on dim 0 so conds can be concatenated.

    text:        prompt embeddings (B, L, D)
    text_mask:   attention mask (B, L) for models that use it (the emoji U-Net); IF ignores it,
                 as IFPipeline does
    image:       stage II only: the upsampled, noised low-res image, concatenated to x_t
    noise_level: stage II only: the timestep the low-res image was noised to (class labels)
    """

    text: torch.Tensor
    text_mask: torch.Tensor | None = None
    image: torch.Tensor | None = None
    noise_level: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.text.shape[0]

    def _map(self, fn) -> "Cond":
        return replace(self, **{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                                for f in fields(self)})

    def __getitem__(self, idx: slice) -> "Cond":
        return self._map(lambda v: v[idx])

    def repeat_interleave(self, n: int) -> "Cond":
        """Each sample n times in a row (num_images_per_prompt semantics)."""
        return self if n == 1 else self._map(lambda v: v.repeat_interleave(n, dim=0))

    def to(self, device=None, dtype=None) -> "Cond":
        # Masks and noise levels are integer tensors: only move them.
        return self._map(lambda v: v.to(device=device, dtype=dtype if v.is_floating_point() else None))

    def with_image(self, image: torch.Tensor | None, noise_level: torch.Tensor | None) -> "Cond":
        return replace(self, image=image, noise_level=noise_level)

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        first = conds[0]
        out = {}
        for f in fields(first):
            vals = [getattr(c, f.name) for c in conds]
            out[f.name] = None if vals[0] is None else torch.cat(vals, dim=0)
        return Cond(**out)


@runtime_checkable
class PromptEncoder(Protocol):
    """Turns prompts into `Cond`s; implementations cache embeddings on disk."""

    def encode(self, prompts: list[str]) -> Cond: ...


@runtime_checkable
class Denoiser(Protocol):
    schedule: NoiseSchedule
    sample_size: int  # square image side the model works at
    channels: int  # image channels of x_t (3)
    name: str  # model id or path, recorded in PNG metadata
    device: torch.device
    dtype: torch.dtype
    prompt_encoder: PromptEncoder

    def __call__(self, x: torch.Tensor, t: int, cond: Cond) -> tuple[torch.Tensor, "torch.Tensor | None"]:
        """Noise estimate (B, C, H, W) and raw variance channels (B, C, H, W) or None."""
        ...


class FlowDenoiser:
    """Any flow-matching model as a `Denoiser`, so it runs every edit through the one loop.

    `velocity(x_flow, s, cond) -> v` is the model in its own coordinates: x_flow = (1 - s) x0 + s eps
    (s = 0 clean, s = 1 noise; the course's part B writes t = 1 - s) and v = eps - x0. The loop
    hands over its variance-preserving state x at timestep t; that is the flow state rescaled,
    x_flow = x / (alpha_t + sigma_t), at s = sigma_t / (alpha_t + sigma_t), which for a
    flow-matching schedule (`NoiseSchedule.from_config({"flow_matching": True, ...})`) is
    s = (t + 1) / (T + 1) up to the float32 rounding of the abar table (< 1e-5; near t = 0, where
    abar ~ 1 - 1e-6, that table is what the state's noise really is, so s is taken from it). The
    velocity comes back as eps = (alpha v + x) / (alpha + sigma).
    dfedit-train's flow checkpoints need no adapter (their input preconditioning is scale-free and
    their schedule says `flow_prediction`); this is for models trained elsewhere (and for tests)."""

    channels = 3

    def __init__(self, velocity, schedule: NoiseSchedule, sample_size: int, name: str = "flow model",
                 prompt_encoder: PromptEncoder | None = None, device="cpu", dtype=torch.float32, channels: int = 3):
        self.velocity, self.schedule, self.sample_size, self.name = velocity, schedule, sample_size, name
        self.prompt_encoder, self.device, self.dtype, self.channels = prompt_encoder, torch.device(device), dtype, channels

    def flow_time(self, t: int) -> float:
        a, s = self.schedule.alpha_sigma(t)
        return float(s / (a + s))

    def __call__(self, x: torch.Tensor, t: int, cond: Cond):
        from .schedule import output_to_eps

        a, s = self.schedule.alpha_sigma(t)
        v = self.velocity(self.schedule.to_flow(x, t), self.flow_time(t), cond)
        return output_to_eps("flow_prediction", v, x, a.to(x.dtype), s.to(x.dtype)), None
