"""Model backends: what `--model` names, resolved once per command.

A backend knows one family of models: how to recognise a model string, what the model's configs
say (a `ModelInfo`: noise schedule, image size, default guidance and prompt, whether it pairs with
an upscaler, how long a prompt may be), and how to load its denoiser, its prompt encoder and the
upscaler that follows it. `resolve(model)` asks the registered backends in turn and returns the
ModelInfo of the first that claims the string; everything downstream (the API, the CLI's checks)
takes that ModelInfo and never looks at the model string again, so a config is read and a Hub
snapshot looked up once per command. A string that no backend can use is described here, in every
backend's own words (`summary`, `explain`): `unknown_model`.

    emoji.py      dfedit-train run and checkpoint directories, and the built-in `emoji`
    deepfloyd.py  DeepFloyd IF: stage I, and stage II as the `Upscaler`; the fallback that claims
                  the rest (Hub ids and diffusers directories)
    hub.py        Hub ids and diffusers-layout directories resolved to local snapshots
    t5.py         IF's T5 text encoder behind the embedding cache

A new backend is one new file: a class implementing `Backend`, and `register(TheBackend())`
(tests/test_backends.py registers one inside the test). No backend imports another: what one
needs of another family (an emoji model's --upscale runs IF-II) it asks the registry for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Protocol, TypeVar, runtime_checkable

import torch

from ..denoiser import Cond, Denoiser, PromptEncoder
from ..errors import ParamError
from ..schedule import NoiseSchedule

S = TypeVar("S")  # a backend's own record of a model (ModelInfo.source)


@dataclass(eq=False)
class ModelInfo(Generic[S]):
    """A stage I model as its configs describe it (no weights loaded)."""

    name: str  # the model string as given (--model)
    backend: "Backend"
    schedule: NoiseSchedule
    sample_size: int
    default_cfg: float = 7.0  # --cfg when not given
    default_prompt: str = ""  # the prompt of sdedit / inpaint / denoise when none is given
    upscales: bool = False  # runs stage II unless told --no-upscale
    prompt_limit: int | None = None  # tokens the text encoder reads (None: no limit)
    text_encoder: str = "the text encoder"  # the text encoder's name, "IF's T5 text encoder"
    # what the text encoder is given for a typed prompt, (prompt, say) -> text, where say(line)
    # tells the user about a change (emoji models: emoji become their names); None: the prompt itself
    prompt_text: Callable[..., str] | None = None
    offloads: bool = True  # whether offload (weights streamed from CPU RAM to the GPU) applies to it
    is_stage2: bool = False  # a stage II (super-resolution) model: `resolve` refuses it as stage I
    styles: tuple[str, ...] = ()  # drawing sets it can be asked for (style); empty: it has none
    source: S = field(default=None, repr=False)  # the backend's own: resolved paths, parsed configs


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
    # What --model takes of this backend, one phrase per kind of string ("a Hub id such as ..."):
    # the registry lists every backend's when a model string is unknown (a backend without one is
    # named by its `name`). A backend may also have `explain(model, param) -> str | None`: what a
    # string it recognises but cannot use is (its name, then the sentence), for that message.
    summary: tuple[str, ...]

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

    def check_upscale(self, info: ModelInfo, stage2: str, steps: int, noise_level: int) -> None:
        """What `dfedit upscale` checks before anything loads: that stage II `stage2` can follow
        this model for `steps` steps at `noise_level`, from configs alone; one sentence
        (ParamError / DfeditError) when it cannot."""
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


def model_kinds() -> str:
    """What a model parameter takes: every registered backend's `summary`, in the order they are
    asked."""
    _builtin()
    kinds = [k for b in BACKENDS for k in (getattr(b, "summary", None) or (f"a {b.name} model",))]
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + ", or " + kinds[-1]


def unknown_model(model: str, param: str = "model", why: str = "does not exist") -> ParamError:
    """The sentence for a model string (given as `param`) that names no usable model: what a
    backend that recognises the string says of it (`explain`), else `why` (what the string is,
    after its name) and what the parameter takes."""
    _builtin()
    for backend in list(BACKENDS):
        explain = getattr(backend, "explain", None)
        said = explain(model, param) if explain is not None else None
        if said:
            return model_error(param, said)
    return model_error(param, f"{model} {why}: {{{param}}} takes {model_kinds()}")


def resolve(model: str, strict: bool = True) -> ModelInfo:
    """The ModelInfo of a stage I model string: the first registered backend that claims it.
    strict=False: also a stage II model, for loading it and letting the loader say what it is
    instead."""
    _builtin()
    for backend in list(BACKENDS):
        info = backend.probe(model)
        if info is not None:
            if strict and info.is_stage2:
                raise model_error("model", f"{model} is a stage II (super-resolution) checkpoint: pass a stage I model")
            return info
    raise unknown_model(model)


def standalone_upscaler(model: str, device: torch.device, dtype: torch.dtype, **kw) -> Upscaler:
    """The stage II `model` names, with a text encoder of its own, for a stage I model whose
    family has none (emoji models take IF-II): made by the first backend that offers one
    (`standalone_upscaler(model, device, dtype, *, offload, cache_dir, quiet, hint)`)."""
    _builtin()
    for backend in list(BACKENDS):
        make = getattr(backend, "standalone_upscaler", None)
        if make is not None:
            return make(model, device, dtype, **kw)
    raise model_error("stage2", f"{model}: no backend runs a stage II model on its own")  # pragma: no cover
