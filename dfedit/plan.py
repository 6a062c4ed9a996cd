"""The plan of one generating run: every option checked once, before any weights load.

A `Plan` is built from the options and the model's `ModelInfo` (its configs and tokenizer only) by
`make_plan`, which raises a `ParamError` for the first bad option; the CLI only maps those to
flags. Everything after that reads the plan and checks nothing again: the timesteps are planned
here, the guidance default is filled in here, and stage II's steps and noise level are checked
against its configs here, so a bad stage II option fails before stage I spends minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .constants import DEFAULT_SAMPLER, DEFAULT_STRIDE, NOISE_LEVEL, STAGE2_CFG, STAGE2_STEPS
from .errors import DfeditError, ParamError

if TYPE_CHECKING:
    import torch

    from .backends import ModelInfo, Upscaler

SEED_MAX = 2**64 - 1


@dataclass(frozen=True)
class Stage2Plan:
    """Stage II of a run: its model calls, guidance and the noise added to the low-res image."""

    model: str
    steps: int = STAGE2_STEPS
    cfg: float = STAGE2_CFG
    noise_level: int = NOISE_LEVEL

    def meta(self) -> dict:
        return {"stage2": self.model, "stage2_steps": self.steps, "stage2_cfg": self.cfg,
                "noise_level": self.noise_level}


@dataclass(frozen=True)
class Plan:
    """What a generating run will do. `timesteps` are stage I's before an edit starts part-way
    (SDEdit) or revisits some (RePaint); `cfg` is the guidance scale actually used (the model's
    default filled in); `stage2` is None when stage II does not run."""

    prompts: tuple[str, ...]  # every prompt the run encodes, checked against the text encoder
    negative_prompt: str
    seed: int
    num_samples: int
    cfg: float
    sampler: str
    eta: float
    stride: int | None  # as given (None: the default stride, unless steps is given)
    steps: int | None
    timesteps: tuple[int, ...]
    stage2: Stage2Plan | None = None
    record_every: int = 0  # keep the x0 estimate every this many steps (0: none)
    style: str | None = None

    def generator(self) -> "torch.Generator":
        return make_generator(self.seed)

    def meta(self) -> dict:
        """The plan's part of an output's metadata (the edit and the loop add theirs)."""
        from .samplers import sampler_meta
        return {"negative_prompt": self.negative_prompt, "seed": self.seed, "cfg": self.cfg,
                "stride": (self.stride or DEFAULT_STRIDE) if self.steps is None else None,
                **sampler_meta(self.sampler, self.eta)}


def make_plan(info: "ModelInfo", prompts: list[str], *, seed: int = 0, cfg: float | None = None,
              stride: int | None = None, steps: int | None = None, num_samples: int = 1,
              upscale: bool | None = None, stage2: str | None = None, stage2_steps: int = STAGE2_STEPS,
              stage2_cfg: float = STAGE2_CFG, noise_level: int = NOISE_LEVEL, negative_prompt: str = "",
              record_every: int = 0, sampler: str = DEFAULT_SAMPLER, eta: float = 0.0,
              resampling: bool = False, style: str | None = None, offload: bool = False,
              upscaler: Callable[[], "Upscaler"] | None = None,
              prompts_checked: Callable[[list[str]], None] | None = None) -> Plan:
    """Check every option against `info` (configs and tokenizer, no weights) and return the plan.

    `resampling`: the edit revisits timesteps (RePaint), so the sampler must draw fresh noise.
    `upscaler()` gives stage II's `Upscaler` when it runs (its configs check steps and noise
    level); `prompts_checked` replaces the prompt check (DFEdit passes its own, which a caller
    without a tokenizer, such as the random-weight IF benchmark, may replace)."""
    from .sampler import plan_timesteps
    from .samplers import check_sampler
    check_numbers(seed=seed, cfg=cfg, stage2_cfg=stage2_cfg, eta=eta, num_samples=num_samples)
    (prompts_checked or (lambda ps: check_prompts(info, ps)))(list(prompts) + [negative_prompt])
    if style is not None:
        from .emoji.denoiser import check_style
        check_style(info.styles, style, info.name)
    check_sampler(sampler, eta, resampling=resampling)
    timesteps = plan_timesteps(info.schedule, sampler, stride, steps)
    if offload and not info.offloads:
        raise ParamError("offload", f"is for models too large for the GPU's memory; {info.name} is small enough to "
                         "load whole: leave out {offload}")
    if upscale is None:
        upscale = info.upscales  # the backend's default: IF pairs with stage II, emoji models do not
    s2 = None
    if upscale:
        s2 = Stage2Plan(stage2, stage2_steps, stage2_cfg, noise_level)
        if upscaler is not None:
            upscaler().check(stage2_steps, noise_level)
    return Plan(prompts=tuple(dict.fromkeys(prompts)), negative_prompt=negative_prompt, seed=int(seed),
                num_samples=num_samples, cfg=info.default_cfg if cfg is None else cfg, sampler=sampler, eta=eta,
                stride=stride, steps=steps, timesteps=tuple(timesteps), stage2=s2, record_every=record_every,
                style=style)


# ---- the checks a plan is made of ----------------------------------------------------------------


def check_numbers(*, seed: int = 0, cfg: float | None = None, stage2_cfg: float | None = None, eta: float = 0.0,
                  num_samples: int = 1) -> None:
    """What can be checked from the numbers alone, before any config is read."""
    if num_samples < 1:
        raise ParamError("num_samples", f"must be at least 1, got {num_samples}")
    check_seed(seed)
    check_finite(cfg, "cfg")
    check_finite(stage2_cfg, "stage2_cfg")
    check_finite(eta, "eta")


def check_seed(seed: int, param: str = "seed") -> int:
    if not 0 <= int(seed) <= SEED_MAX:
        raise ParamError(param, f"must be between 0 and 2^64 - 1 ({SEED_MAX}), got {seed}")
    return int(seed)


def check_finite(value: float | None, param: str) -> None:
    if value is not None and not math.isfinite(value):
        raise ParamError(param, f"must be a finite number, got {value}")


def check_text(prompts: list[str]) -> None:
    """Prompts are text: a command line whose bytes are not UTF-8 reaches Python as lone surrogates,
    which no tokenizer takes."""
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            shown = p.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise DfeditError(f"the prompt {shown[:60]!r} is not valid UTF-8 text: type it again in UTF-8") from None


def encoded(info: "ModelInfo", prompts: list[str]) -> list[str]:
    """What the text encoder is given for each prompt: the prompt itself, or the backend's
    reading of it (an emoji model reads emoji as their names: "🔥" -> "fire"), said once."""
    from .progress import note
    read = info.prompt_text
    return list(prompts) if read is None else [read(p, say=note) if p else p for p in prompts]


def check_prompts(info: "ModelInfo", prompts: list[str]) -> None:
    """Every prompt must be text and fit the text encoder's token limit: a longer one would be cut
    off silently."""
    check_text(prompts)
    prompts = [p for p in dict.fromkeys(prompts) if p]
    if not prompts or info.prompt_limit is None:
        return
    limit, what = info.prompt_limit, info.text_encoder
    for p, n in zip(prompts, info.backend.count_tokens(info, encoded(info, prompts))):
        if n > limit:
            short = p if len(p) <= 40 else p[:37] + "..."
            raise DfeditError(f"the prompt {short!r} is {n} tokens long and {what} reads at most {limit} "
                              "(the rest would be cut off silently): shorten it")


def make_generator(seed: int) -> "torch.Generator":
    """All draws come from one CPU generator in diffusers' order, whatever the device."""
    import torch
    return torch.Generator("cpu").manual_seed(check_seed(seed))
