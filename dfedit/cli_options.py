"""The options the `dfedit` commands share, declared once, and how a command turns them into a plan.

Each option is one annotated type (its flag, default and help, the defaults read from
dfedit.constants); `@options(...)` adds the named ones to a command's signature and hands the
command one `Options`, with --threads applied and the output paths checked (none may replace an
input) before anything is read. `start` makes the library object and the run's one `Plan`.
"""

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_errors import error_handler
from .constants import (DEFAULT_SAMPLER, DEFAULT_STAGE1, DEFAULT_STAGE2, DEFAULT_STRIDE, NOISE_LEVEL, SAMPLER_NAMES,
                        STAGE2_CFG, STAGE2_STEPS)
from .errors import DfeditError

MAX_SAMPLES = 64  # --num-samples: one grid of 8 x 8 tiles; more is another run with another --seed

Model = Annotated[str, typer.Option("--model", help="Stage I model: emoji (built in: 32 px emoji, offline, "
                                    "any CPU), a Hub id, a local diffusers IF directory, or a dfedit-train "
                                    "run or checkpoint directory.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the CPU generator all random draws come from "
                                   "(0 to 2^64 - 1).")]
Cfg = Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale (1 = no guidance; "
                                              "default: 7 for IF, the model's own for emoji models).")]
Stride = Annotated[Optional[int], typer.Option("--stride", help="Timestep stride: t = 990, 990-stride, ..., 0 "
                                               f"(default {DEFAULT_STRIDE}: {990 // DEFAULT_STRIDE + 1} model "
                                               "calls).")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Model calls instead of --stride: evenly spaced "
                                              "timesteps from 999 (e.g. --sampler dpmpp-2m --steps 20).")]
SamplerOpt = Annotated[str, typer.Option("--sampler", help=f"{' | '.join(SAMPLER_NAMES)} (README: when to "
                                         "use which). Both stages.")]
Eta = Annotated[float, typer.Option("--eta", min=0.0, help="DDIM noise: 0 = deterministic, 1 = DDPM-like.")]
# --out and --trajectory are read as text: a Path would turn --out "" into "." before we see it
Out = Annotated[Optional[str], typer.Option("--out", "-o", help="Output PNG (default: dfedit-<command>.png, "
                                             "never overwriting an existing default file).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (fp16 on GPU, fp32 on CPU), float16, bfloat16, float32.")]
Offload = Annotated[bool, typer.Option("--offload", help="Keep weights in CPU RAM and stream them to the GPU "
                                       "layer by layer (slow; for GPUs with too little memory).")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Embedding cache (default "
                                                  "$DFEDIT_CACHE or ~/.cache/dfedit).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: 1 on a machine "
                                                "with 2 CPUs or fewer, where more thrash against other jobs; "
                                                "else up to 4; OMP_NUM_THREADS when set).")]
Stage2 = Annotated[str, typer.Option("--stage2", help="Stage II upscaler (IF only): Hub id or local diffusers "
                                     "directory.")]
Stage2Steps = Annotated[int, typer.Option("--stage2-steps", help="Stage II steps (diffusers spacing).")]
Stage2Cfg = Annotated[float, typer.Option("--stage2-cfg", help="Stage II guidance scale.")]
NoiseLevel = Annotated[int, typer.Option("--noise-level", help="Noise added to the low-res image for stage II.")]
Upscale = Annotated[Optional[bool], typer.Option("--upscale/--no-upscale", help="Run stage II (default: on for IF "
                                                 "models, off for emoji models).")]
Style = Annotated[Optional[str], typer.Option("--style", help="Drawing set, for models trained on several (the "
                                              "built-in emoji model: google, twitter or fluent); default: none, so "
                                              "seeds vary across sets.")]
NumSamples = Annotated[int, typer.Option("--num-samples", "-n", min=1, help=f"Images per setting, 1 to {MAX_SAMPLES} "
                                         "(shown as a grid, 8 per row).")]
Negative = Annotated[str, typer.Option("--negative-prompt", help="Unconditional prompt.")]
Display = Annotated[Optional[bool], typer.Option("--display/--no-display", help="Also write OUT.display.png for a "
                                                 "person to look at: the image enlarged (nearest-neighbour, at least "
                                                 "256 px), beside the input for sdedit and the input and mask for "
                                                 "inpaint. Default: on for images under 128 px and for inpaint.")]
GenTrajectory = Annotated[Optional[str], typer.Option("--trajectory", help="Also write a GIF of the x0 estimates "
                                                      "every 3 steps (both stages).")]
Prompt = Annotated[str, typer.Option("--prompt", "-p", help="Text prompt.")]
EditPrompt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="Text prompt (default: 'a high quality "
                                                   "photo' for IF; the empty prompt, the model's unconditional "
                                                   "branch, for emoji models, which on the built-in model gives "
                                                   "smudges rather than a clean emoji once much is regenerated, "
                                                   "as docs/gallery.md shows: give the caption the result should "
                                                   "have, e.g. --prompt 'grinning face').")]
Trajectory = Annotated[Optional[str], typer.Option("--trajectory", help="Also write a GIF of the process.")]
InputImage = Annotated[Path, typer.Argument(help="Input image (any size/mode; centre-cropped to the model size).")]


def _kw(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


# Every shared option once: name -> (annotated type, default). A command takes the ones it names.
OPTIONS = {p.name: p for p in [
    _kw("model", Model, DEFAULT_STAGE1), _kw("stage2", Stage2, DEFAULT_STAGE2), _kw("upscale", Upscale, None),
    _kw("seed", Seed, 0), _kw("style", Style, None), _kw("cfg", Cfg, None), _kw("stride", Stride, None),
    _kw("steps", Steps, None), _kw("num_samples", NumSamples, 1), _kw("negative_prompt", Negative, ""),
    _kw("stage2_steps", Stage2Steps, STAGE2_STEPS), _kw("stage2_cfg", Stage2Cfg, STAGE2_CFG),
    _kw("noise_level", NoiseLevel, NOISE_LEVEL), _kw("sampler", SamplerOpt, DEFAULT_SAMPLER), _kw("eta", Eta, 0.0),
    _kw("out", Out, None), _kw("display", Display, None), _kw("trajectory", Trajectory, None),
    _kw("device", Device, "auto"), _kw("dtype", Dtype, "auto"), _kw("offload", Offload, False),
    _kw("cache_dir", CacheDir, None), _kw("quiet", Quiet, False), _kw("threads", Threads, None),
]}
GENERATING = [n for n in OPTIONS]  # what sample, sdedit, inpaint, anagram and hybrid take
GENERATING_HELP = {"trajectory": GenTrajectory}  # their --trajectory records both stages


@dataclass
class Options:
    """The shared options of one command (those it does not take keep their defaults)."""

    model: str = DEFAULT_STAGE1
    stage2: str = DEFAULT_STAGE2
    upscale: Optional[bool] = None
    seed: int = 0
    style: Optional[str] = None
    cfg: Optional[float] = None
    stride: Optional[int] = None
    steps: Optional[int] = None
    num_samples: int = 1
    negative_prompt: str = ""
    stage2_steps: int = STAGE2_STEPS
    stage2_cfg: float = STAGE2_CFG
    noise_level: int = NOISE_LEVEL
    sampler: str = DEFAULT_SAMPLER
    eta: float = 0.0
    out: Optional[Path] = None
    display: Optional[bool] = None
    trajectory: Optional[Path] = None
    device: str = "auto"
    dtype: str = "auto"
    offload: bool = False
    cache_dir: Optional[Path] = None
    quiet: bool = False
    threads: Optional[int] = None
    _info: object = None

    @property
    def info(self):
        """--model as its backend describes it (dfedit.backends.ModelInfo), resolved once."""
        if self._info is None:
            from .backends import resolve
            self._info = resolve(self.model)
        return self._info

    def plan_options(self, record_every: int = 3) -> dict:
        """The keywords of `DFEdit.plan`, from the options; `record_every` applies with --trajectory."""
        return dict(seed=self.seed, cfg=self.cfg, stride=self.stride, steps=self.steps, num_samples=self.num_samples,
                    upscale=self.upscale, stage2_steps=self.stage2_steps, stage2_cfg=self.stage2_cfg,
                    noise_level=self.noise_level, negative_prompt=self.negative_prompt, sampler=self.sampler,
                    eta=self.eta, record_every=record_every if self.trajectory else 0)


handle_errors = error_handler("dfedit", cpu_oom_hint="try fewer --num-samples, or free some memory")


def options(*names: str, display_copy: bool = True, help_overrides: dict | None = None):
    """Add the named OPTIONS to a command, which receives them as `opts: Options` with --threads
    applied and the output paths checked (none may replace an input file) before it runs."""
    params = [OPTIONS[n].replace(annotation=(help_overrides or {}).get(n, OPTIONS[n].annotation)) for n in names]

    def deco(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != "opts"]

        @functools.wraps(fn)
        def wrapper(**kw):
            opts = Options(**{k: kw.pop(k) for k in names})
            from .devices import set_threads
            set_threads(opts.threads)  # before any work: see dfedit.devices.default_threads
            if opts.num_samples > MAX_SAMPLES:
                raise DfeditError(f"--num-samples {opts.num_samples} is more than {MAX_SAMPLES}, the most one run "
                                  "makes (one 8 x 8 grid): run again with another --seed for more")
            if "out" in names:
                from .outputs import gif_path, out_path, protect_inputs
                inputs = [kw[k] for k in ("image", "mask") if kw.get(k) is not None]
                opts.out = out_path(opts.out, fn.__name__)
                opts.trajectory = gif_path(opts.trajectory)
                protect_inputs(opts.out, opts.trajectory, inputs, display=display_copy and opts.display is not False)
            return fn(opts=opts, **kw)

        wrapper.__signature__ = sig.replace(parameters=own + params)
        wrapper.__annotations__ = {**fn.__annotations__, **{p.name: p.annotation for p in params}}
        wrapper.__annotations__.pop("opts", None)
        del wrapper.__wrapped__  # Typer must see the new signature, not the original's
        return handle_errors(wrapper)

    return deco


generating = options(*GENERATING, help_overrides=GENERATING_HELP)


def check_cache_dir(cache_dir: Optional[Path]) -> None:
    """`embed`'s job is writing the cache, so it must be writable; elsewhere a cache that cannot be
    written costs one warning and the command runs without it (dfedit.cache)."""
    import os

    from .cache import cache_root
    from .files import writable_dir
    root = cache_root(cache_dir)
    why = writable_dir(root)
    if why is not None:
        flag = "--cache-dir" if cache_dir is not None else ("DFEDIT_CACHE" if os.environ.get("DFEDIT_CACHE")
                                                            else "the cache directory")
        raise DfeditError(f"{flag} {root} cannot be used: {why}; pass a writable --cache-dir")


def library(opts: Options, **override):
    """The library object of a command; the CLI frees each model as soon as it is done with its stage."""
    import torch

    from .pipeline import DFEdit
    kw = dict(model=opts.model, stage2=opts.stage2, device=opts.device, dtype=opts.dtype, offload=opts.offload,
              cache_dir=str(opts.cache_dir) if opts.cache_dir else None, quiet=opts.quiet, keep_loaded=False,
              info=opts.info, style=opts.style)
    df = DFEdit(**{**kw, **override})
    if df.device.type == "cpu" and df.dtype == torch.float16:
        typer.echo("note: float16 is many times slower than float32 on a CPU (it has no fast float16 kernels); "
                   "--dtype float32 (the CPU default) or bfloat16 is faster", err=True)
    return df


def start(opts: Options, prompts: list[str], resampling: bool = False):
    """(the library object, the run's plan): every option checked from configs and tokenizers,
    no weights loaded yet."""
    df = library(opts)
    return df, df.plan(list(prompts), resampling=resampling, **opts.plan_options())
