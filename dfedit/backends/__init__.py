"""Model backends: what `--model` names, resolved once per command.

A backend knows one family of models: how to recognise a model string, what the model's configs
say (a `ModelInfo`: noise schedule, image size, default guidance and prompt, whether it pairs with
an upscaler, how long a prompt may be), and how to load its denoiser, its prompt encoder and the
upscaler that follows it. `resolve(model)` asks the registered backends in turn and returns the
ModelInfo of the first that claims the string; everything downstream (the API, the CLI's checks)
takes that ModelInfo and never looks at the model string again, so a config is read and a Hub
snapshot looked up once per command.

    emoji.py      dfedit-train run and checkpoint directories, and the built-in `emoji`
    deepfloyd.py  DeepFloyd IF (Hub ids and diffusers directories): Hub resolution, stage I, T5
                  behind the embedding cache, and stage II as the `Upscaler`; the fallback that
                  claims the rest

A new backend is one new file: a class implementing `Backend`, and `register(TheBackend())`
(tests/test_backends.py registers one inside the test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from ..denoiser import Cond, Denoiser, PromptEncoder
from ..errors import ParamError
from ..schedule import NoiseSchedule


@dataclass(eq=False)
class ModelInfo:
    """A stage I model as its configs describe it (no weights loaded)."""

    name: str  # the model string as given (--model)
    backend: "Backend"
    schedule: NoiseSchedule
    sample_size: int
    default_cfg: float = 7.0  # --cfg when not given
    default_prompt: str = ""  # the prompt of sdedit / inpaint / denoise when none is given
    upscales: bool = False  # runs stage II unless told --no-upscale
    prompt_limit: int | None = None  # tokens the text encoder reads (None: no limit)
    text_encoder: str = "the text encoder"  # how messages name it
    # what the text encoder is given for a typed prompt, (prompt, say) -> text, where say(line)
    # tells the user about a change (emoji models: emoji become their names); None: the prompt itself
    prompt_text: Callable[..., str] | None = None
    stage2_hint: str | None = None  # appended to a stage II failure's message
    no_offload: str | None = None  # why offload does not apply to it (None: it does), after the word "offload"
    problem: str | None = None  # why it cannot run as a stage I model, after the model's name (`resolve` raises it)
    styles: tuple[str, ...] = ()  # drawing sets it can be asked for (style); empty: it has none
    source: Any = field(default=None, repr=False)  # the backend's own: resolved paths, parsed configs


@runtime_checkable
class Upscaler(Protocol):
    """A super-resolution stage that runs after stage I through the same loop (IF stage II)."""

    def check(self, steps: int, noise_level: int) -> None:
        """Validate from configs alone, before stage I runs."""
        ...

    def load(self, prompt_encoder: PromptEncoder | None = None) -> Denoiser:
        """Its denoiser; `prompt_encoder` is stage I's, which it may share (IF's stages share T5)."""
        ...

    def timesteps(self, den: Denoiser, steps: int, sampler: str, eta: float) -> list[int]:
        """The timesteps of `steps` model calls."""
        ...

    def condition(self, den: Denoiser, low_res: torch.Tensor, gen: torch.Generator, noise_level: int,
                  conds: list[Cond], uncond: Cond) -> tuple[torch.Tensor, list[Cond], Cond]:
        """(x_T, conds, uncond) for the upscaler's loop, conditioned on the low-res images."""
        ...


@runtime_checkable
class Backend(Protocol):
    name: str

    def probe(self, model: str) -> ModelInfo | None:
        """The ModelInfo of `model` from its configs alone, or None when it is not this backend's
        (then the next backend is asked); one sentence (DfeditError) when it is but is unusable."""
        ...

    def count_tokens(self, info: ModelInfo, prompts: list[str]) -> list[int]: ...

    def load(self, info: ModelInfo, device: torch.device, dtype: torch.dtype, *, offload: bool = False,
             cache_dir=None, quiet: bool = True) -> Denoiser: ...

    def prompt_encoder(self, info: ModelInfo, device: torch.device, dtype: torch.dtype, *, offload: bool = False,
                       cache_dir=None, quiet: bool = True) -> PromptEncoder:
        """The prompt encoder alone (`dfedit embed`), without the denoiser's weights."""
        ...

    def upscaler(self, info: ModelInfo, model: str, device: torch.device, dtype: torch.dtype, *,
                 offload: bool = False, cache_dir=None, quiet: bool = True) -> Upscaler:
        """The upscaler named by --stage2 for this stage I model."""
        ...


BACKENDS: list[Backend] = []


def register(backend: Backend, first: bool = True) -> Backend:
    """Add a backend; `first` (the default) puts it before the others, so it is asked first."""
    BACKENDS.insert(0, backend) if first else BACKENDS.append(backend)
    return backend


def unregister(backend: Backend) -> None:
    BACKENDS.remove(backend)


def _builtin() -> None:
    if not any(getattr(b, "builtin", False) for b in BACKENDS):
        from .deepfloyd import DeepFloyd
        from .emoji import Emoji
        BACKENDS.extend([Emoji(), DeepFloyd()])  # DeepFloyd last: it claims every other string


def model_error(param: str, problem: str) -> ParamError:
    """A sentence about the model given as `param` ("model" or "stage2"), which may name the model
    parameters as {model}, {stage2}, {upscale}: `model emoj does not exist` from the library,
    `--model emoj does not exist` on a command line."""
    return ParamError(param, problem, also=("model", "stage2", "upscale"))


def resolve(model: str, strict: bool = True) -> ModelInfo:
    """The ModelInfo of a stage I model string: the first registered backend that claims it.
    strict=False: also a model that cannot run as stage I (its `problem` says why), for loading
    it and letting the loader say what it is instead."""
    _builtin()
    for backend in list(BACKENDS):
        info = backend.probe(model)
        if info is not None:
            if strict and info.problem:
                raise model_error("model", info.problem)
            return info
    raise model_error("model", f"{model}: no backend knows this model")  # pragma: no cover - DeepFloyd claims all
