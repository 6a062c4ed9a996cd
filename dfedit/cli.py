"""`dfedit` command line: options -> one plan -> an edit -> the loop -> output files.

Each command turns its options into one `Plan` (dfedit.plan) and one `Edit` (dfedit.edits) before
any weights load; the library raises a `ParamError` for a bad value and cli_errors names the flag
it came from, so every option is checked once, in one place, and bad input costs nothing and
leaves nothing behind. Output paths are checked (and kept off the inputs) before anything is read;
dfedit.outputs names, draws and writes them.

The options the commands share are declared once (OPTIONS) and added to each command's signature
by @options(...); the command receives them as one `Options`.
"""

import functools
import inspect
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import cli_errors
from .cli_errors import OneLineErrors, error_handler
from .constants import (DEFAULT_SAMPLER, DEFAULT_STAGE1, DEFAULT_STAGE2, DEFAULT_STRIDE, NOISE_LEVEL, SAMPLER_NAMES,
                        STAGE2_CFG, STAGE2_STEPS, VIEW_NAMES)
from .errors import DfeditError

MAX_SAMPLES = 64  # --num-samples: one grid of 8 x 8 tiles; more is another run with another --seed

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Edit images with pixel-space diffusion models: DeepFloyd IF (the default, GPU) or "
                       "--model emoji, the built-in 32 px emoji model that runs offline on any CPU "
                       "(try: dfedit sample \"grinning face\" --model emoji).")

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


def _check_cache_dir(cache_dir: Optional[Path]) -> None:
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


def _api(opts: Options, **override):
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


def _start(opts: Options, prompts: list[str], resampling: bool = False):
    """(the library object, the run's plan): every option checked from configs and tokenizers,
    no weights loaded yet."""
    df = _api(opts)
    return df, df.plan(list(prompts), resampling=resampling, **opts.plan_options())


# ---- writing what a command made ---------------------------------------------------------------

def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["dfedit"] + cli_errors.ARGV)


def _single(opts: Options, img, meta: dict, **kw) -> None:
    from .outputs import save_single
    save_single(img, opts.out, meta, opts.quiet, opts.display, command_line=_command_line(), **kw)


def _sheet(opts: Options, rows, labels, meta: dict, outlined=()) -> None:
    from .outputs import save_sheet
    save_sheet(opts.out, rows, labels, meta, opts.quiet, outlined, command_line=_command_line())


def _tiles(opts: Options, res, label: str) -> None:
    """One image as itself (and its display copy), several as a labelled grid."""
    from .outputs import numbered_labels, wrap
    tiles = res.pil()
    if len(tiles) == 1:
        _single(opts, tiles[0], res.meta)
    else:
        _sheet(opts, *wrap(tiles, numbered_labels(label, len(tiles))), res.meta)


def _gif(opts: Options, frames, meta: dict) -> None:
    from .trajectory import save_trajectory
    save_trajectory(frames, opts.trajectory, meta)
    if not opts.quiet:
        typer.echo(f"wrote {opts.trajectory}", err=True)


def _trajectory(opts: Options, results) -> None:
    if opts.trajectory is not None:
        _gif(opts, [f for r in results for f in r.frames], results[0].meta)


def _as_read(res, prompts: list[str]) -> list[str]:
    """Prompts as the model read them (emoji as their names), for tile captions: the grid's font
    has no emoji."""
    return res.meta.get("encoded_prompts", prompts)


# ---- generating commands -------------------------------------------------------------------------

@app.command()
@generating
def sample(prompt: Annotated[str, typer.Argument(help="Text prompt. On an emoji model: one of its captions "
                                                "(dfedit prompts --model emoji lists them; typed emoji are read as "
                                                "their names); the empty prompt \"\" draws smudges, not an emoji.")],
           opts: Options = None):
    """Generate images from a prompt with the hand-written strided sampler (+ stage II)."""
    from . import edits
    df, plan = _start(opts, [prompt])
    res = df.generate(edits.sample(prompt), plan)
    _tiles(opts, res, _as_read(res, [prompt])[0])
    _trajectory(opts, [res])


@app.command()
@generating
def sdedit(image: InputImage,
           prompt: EditPrompt = None,
           i_start: Annotated[list[int], typer.Option("--i-start", help="Start index into the strided timesteps, "
                                                     f"0..{990 // DEFAULT_STRIDE} at stride {DEFAULT_STRIDE} (0: "
                                                     "t=990, almost pure noise; higher: less noise, a smaller "
                                                     "change). Repeatable: several give a sweep.")] = [5],
           repeat: Annotated[int, typer.Option("--repeat", min=1, help="Feed the result back K times.")] = 1,
           opts: Options = None):
    """SDEdit: noise IMAGE to timestep index --i-start and denoise it with --prompt."""
    from . import edits
    from .images import image_at, open_image, to_pil
    from .outputs import numbered_labels, wrap
    prompt = opts.info.default_prompt if prompt is None else prompt
    img = open_image(image)  # decoded once, before any model loads; every stage resizes this
    df, plan = _start(opts, [prompt])
    entries = [edits.sdedit(img, prompt, i, plan, repeat=repeat) for i in i_start]
    # The whole sweep in one model lifetime: every stage I entry on one load, then stage II on one.
    results = df.generate_all(entries, plan)
    for r in results:
        r.meta.update(input=str(image), i_start=list(i_start))
    shown = to_pil(image_at(img, results[0].images.shape[-1]))[0]  # the input as the output's size shows it
    names = [f"i_start={i} (t={plan.timesteps[i]})" for i in i_start]
    tiles = [r.pil() for r in results]
    if len(results) == 1 and len(tiles[0]) == 1:
        _single(opts, tiles[0][0], results[0].meta, panels=[(shown, "original"), (tiles[0][0], names[0])])
    else:
        rows, labels = [], []
        for name, row in zip(names, tiles):
            r, lab = wrap([shown] + row, ["original"] + numbered_labels(name, len(row)), ncol=9)
            rows += r
            labels += lab
        _sheet(opts, rows, labels, results[0].meta)
    _trajectory(opts, results)


@app.command()
@generating
def inpaint(image: InputImage,
            mask: Annotated[Path, typer.Option("--mask", help="Mask image: white = regenerate, black = keep "
                                               "(any size; centre-cropped, nearest-resized).")],
            prompt: EditPrompt = None,
            invert_mask: Annotated[bool, typer.Option("--invert-mask", help="White = keep instead.")] = False,
            jump_length: Annotated[int, typer.Option("--jump-length", min=1, help="RePaint: strides per jump back.")] = 1,
            jump_n_sample: Annotated[int, typer.Option("--jump-n-sample", min=1, help="RePaint: passes over each "
                                                       "stretch (1 = simple per-step replacement).")] = 1,
            opts: Options = None):
    """RePaint inpainting: regenerate the white part of --mask, keep the rest exactly. Writes the result
    (OUT) and original | mask | result (OUT.display.png)."""
    from . import edits
    from .images import image_at, mask_at, open_image, to_pil
    from .outputs import numbered_labels, wrap
    prompt = opts.info.default_prompt if prompt is None else prompt
    img, m = open_image(image), open_image(mask, "mask")  # both decoded once, before any model loads
    edit = edits.inpaint(img, m, prompt, opts.info.sample_size, invert_mask=invert_mask, jump_length=jump_length,
                         jump_n_sample=jump_n_sample)
    df, plan = _start(opts, [prompt], resampling=edit.resamples)
    res = df.generate(edit, plan)
    res.meta.update(input=str(image), mask=str(mask))
    size = res.images.shape[-1]
    shown = to_pil(image_at(img, size))[0]
    mask_tile = to_pil(mask_at(m, size, invert_mask).expand(1, 3, size, size) * 2 - 1)[0]
    mask_label = "mask (white = new)"
    tiles = res.pil()
    if len(tiles) == 1:
        _single(opts, tiles[0], res.meta, panels=[(shown, "original"), (mask_tile, mask_label), (tiles[0], "result")],
                always=True, outlined={(0, 1)})  # framed: its white (regenerate) would vanish into the page
    else:
        _sheet(opts, *wrap([shown, mask_tile] + tiles, ["original", mask_label] +
                           numbered_labels("result", len(tiles))), res.meta, outlined={(0, 1)})
    _trajectory(opts, [res])


@app.command()
@generating
def anagram(prompts: Annotated[list[str], typer.Argument(help="One prompt per view (first: as shown).")],
            view: Annotated[list[str], typer.Option("--view", help=f"View(s) for the 2nd, 3rd... prompt: "
                                                    f"{', '.join(VIEW_NAMES)}.")] = ["flip"],
            view_seed: Annotated[int, typer.Option("--view-seed", help="Seed of the permutation views.")] = 0,
            opts: Options = None):
    """Visual anagram: one image that shows PROMPT_A, and PROMPT_B under --view (N-way with more)."""
    from . import edits
    from .images import to_pil
    from .views import make_view
    views = ["identity"] + list(view)
    if len(prompts) != len(views):
        raise DfeditError(f"{len(views)} views (identity + {len(view)} --view) need {len(views)} prompts, "
                          f"got {len(prompts)}")
    edit = edits.anagram(list(prompts), views, view_seed, offered=VIEW_NAMES)
    df, plan = _start(opts, list(prompts))
    res = df.generate(edit, plan)
    # Show every sample under every view: row = sample, column = view.
    vs = [make_view(v, res.images.shape[-1], view_seed) for v in views]
    rows = [[to_pil(v.apply(res.images[j:j + 1]))[0] for v in vs] for j in range(res.images.shape[0])]
    labels = [[f"{v}: {p}"[:40] for v, p in zip(views, _as_read(res, prompts))] for _ in rows]
    _sheet(opts, rows, labels, res.meta)
    _trajectory(opts, [res])


@app.command()
@generating
def hybrid(prompts: Annotated[list[str], typer.Argument(help="Two or three prompts: low frequencies, (a middle "
                                                        "band,) high frequencies.")],
           split: Annotated[str, typer.Option("--split", help="gaussian (low/high frequencies) or color "
                                              "(grayscale / colour).")] = "gaussian",
           kernel: Annotated[Optional[int], typer.Option("--kernel", help="Gaussian kernel size at 64 px, odd "
                                                         "(default 33; scaled with the model size).")] = None,
           sigma: Annotated[Optional[float], typer.Option("--sigma", help="Gaussian sigma at 64 px (default 2).")] = None,
           opts: Options = None):
    """Hybrid image: low frequencies from the first prompt, high from the last (factorized diffusion)."""
    from . import edits
    edit = edits.hybrid(list(prompts), opts.info.sample_size, split, kernel, sigma)
    df, plan = _start(opts, list(prompts))
    res = df.generate(edit, plan)
    _tiles(opts, res, " + ".join(_as_read(res, prompts)))
    _trajectory(opts, [res])


# ---- diagnostic commands (model size, no stage II) -----------------------------------------------

@app.command()
@options("model", "seed", "out", "trajectory", "quiet", "threads", display_copy=False)
def noise(image: InputImage,
          t: Annotated[list[int], typer.Option("--t", help="Timestep(s) to noise to (repeatable).")] = [250, 500, 750],
          opts: Options = None):
    """Forward process: the image noised to each --t, side by side with the original."""
    from .images import load_image, to_pil
    from .plan import check_seed, make_generator
    from .sampler import randn
    check_seed(opts.seed)
    schedule = opts.info.schedule
    ts = [schedule.check_t(v) for v in t]
    x0 = load_image(image, opts.info.sample_size)
    noisy = _api(opts, device="cpu").noise(x0, ts, seed=opts.seed)
    ims = [to_pil(x0)[0]] + [to_pil(x)[0] for x in noisy]
    meta = {"command": "noise", "input": str(image), "t": ts, "seed": opts.seed, "model": opts.model}
    _sheet(opts, [ims], [["original"] + [f"t={v}" for v in ts]], meta)
    if opts.trajectory is not None:  # one noise draw, t = 0, 30, ..., 990: the forward process as a film
        eps = randn(x0.shape, make_generator(opts.seed), x0.device, x0.dtype)
        _gif(opts, [schedule.add_noise(x0, eps, t) for t in range(0, schedule.num_train_timesteps, DEFAULT_STRIDE)],
             meta)


@app.command()
@options("model", "seed", "cfg", "stride", "steps", "sampler", "eta", "out", "trajectory", "device", "dtype",
         "offload", "cache_dir", "quiet", "threads", display_copy=False)
def denoise(image: InputImage,
            t: Annotated[Optional[list[int]], typer.Option("--t", help="Noise level(s) (repeatable; default 690).")] = None,
            i_start: Annotated[Optional[int], typer.Option("--i-start", help="Start index into the strided "
                                                           "timesteps instead of --t (10 -> t=690).")] = None,
            prompt: EditPrompt = None,
            blur_kernel: Annotated[int, typer.Option("--blur-kernel", help="Gaussian baseline kernel size (odd).")] = 5,
            blur_sigma: Annotated[float, typer.Option("--blur-sigma", help="Gaussian baseline sigma.")] = 2.0,
            opts: Options = None):
    """Noisy | Gaussian blur | one-step | iterative denoising, one row per t (course part 1.2-1.4)."""
    from .edits import check_i_start
    from .filters import check_blur
    from .images import load_image, to_pil
    from .plan import check_finite
    if t and i_start is not None:
        raise DfeditError("give either --t or --i-start, not both")
    check_finite(blur_sigma, "blur_sigma")
    info = opts.info
    check_blur(blur_kernel, blur_sigma, info.sample_size, "blur_kernel", "blur_sigma")  # before anything loads
    prompt = info.default_prompt if prompt is None else prompt
    df = _api(opts)
    plan = df.plan([prompt], **{**opts.plan_options(record_every=1), "num_samples": 1, "upscale": False})
    if i_start is not None:
        ts = [plan.timesteps[check_i_start(i_start, plan.timesteps, plan.stride or DEFAULT_STRIDE, plan.steps)]]
    else:
        ts = [info.schedule.check_t(v) for v in (t or [690])]
    x0 = load_image(image, info.sample_size)
    rows = df.denoise(x0, ts, prompt=prompt, plan=plan, blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    cols = ["noisy", "blur", "one_step", "iterative"]
    tiles = [[to_pil(x0)[0]] + [to_pil(r[c])[0] for c in cols] for r in rows]
    labels = [["original", f"t={r['t']} noisy", "gaussian blur", "one-step", "iterative"] for r in rows]
    meta = {"command": "denoise", "input": str(image), "t": ts, **df.prompt_meta([prompt]), "seed": plan.seed,
            "cfg": plan.cfg, **plan.meta(), "steps": plan.steps, "model": opts.model, "blur_kernel": blur_kernel,
            "blur_sigma": blur_sigma}
    _sheet(opts, tiles, labels, meta)
    if opts.trajectory is not None:
        _gif(opts, [f for r in rows for f in r["frames"]], meta)


@app.command()
@options("model", "device", "dtype", "offload", "cache_dir", "quiet", "threads")
def embed(prompts: Annotated[list[str], typer.Argument(help="Prompts to embed into the cache.")],
          opts: Options = None):
    """Compute prompt embeddings into the on-disk cache (T5 loads only for new prompts)."""
    _check_cache_dir(opts.cache_dir)  # filling it is the whole job
    _api(opts).embed(list(prompts) + [""])  # "" is the unconditional prompt every guided command needs
    if not opts.quiet:
        typer.echo(f"cached {len(prompts)} prompt(s) (+ the empty prompt)", err=True)


@app.command()
@options("model", "stage2", "seed", "stage2_steps", "stage2_cfg", "noise_level", "sampler", "eta", "out", "trajectory",
         "device", "dtype", "offload", "cache_dir", "quiet", "threads", display_copy=False)
def upscale(image: Annotated[Path, typer.Argument(help="Low-res image (centre-cropped to stage I's size).")],
            prompt: Annotated[str, typer.Option("--prompt", help="Prompt describing the image.")] = "",
            opts: Options = None):
    """Run IF stage II on an existing low-resolution image (IF models only)."""
    from .images import load_image
    from .outputs import save
    info = opts.info
    info.backend.check_upscale(info, opts.stage2, opts.stage2_steps, opts.noise_level)
    x = load_image(image, info.sample_size)
    df = _api(opts)
    if info.upscales:  # its stage II reads the prompt with stage I's text encoder (IF's T5)
        from .plan import check_prompts
        check_prompts(info, [prompt])
    r = df.upscale(x, prompt, seed=opts.seed, steps=opts.stage2_steps, cfg=opts.stage2_cfg,
                   noise_level=opts.noise_level, record_every=3 if opts.trajectory else 0, sampler=opts.sampler,
                   eta=opts.eta)
    meta = {**r.meta, "input": str(image), "model": opts.model}
    save(r.pil()[0], opts.out, meta, opts.quiet, command_line=_command_line())
    if opts.trajectory is not None:
        _gif(opts, r.frames, meta)


@app.command()
@handle_errors
def prompts(model: Annotated[str, typer.Option("--model", help="An emoji model: emoji (built in) or an "
                                               "exported dfedit-train model.")] = "emoji",
            search: Annotated[Optional[str], typer.Option("--search", "-s", help="Only captions containing this "
                                                          "text (any case).")] = None,
            held_out: Annotated[bool, typer.Option("--held-out", help="List the held-out captions instead: the "
                                                   "model never trained on them and draws most as smudges.")] = False,
            threads: Threads = None):
    """List the prompts an emoji model knows: the captions it was trained on, one a line (CLDR emoji
    names such as "grinning face" or "flag: Japan"; typed emoji are read as these names)."""
    from .backends.emoji import Emoji, known_captions
    from .devices import set_threads
    set_threads(threads)
    info = Emoji().probe(model)  # no Hub look-up for a model that is not an emoji model
    if info is None:
        raise DfeditError(f"--model {model} is not an emoji model (an IF model reads any English prompt); dfedit prompts "
                          "lists the captions an emoji model was trained on (try --model emoji)")
    lists = known_captions(info)
    which = "held_out" if held_out else "train"
    found = [c for c in lists[which] if search is None or search.casefold() in c.casefold()]
    for c in found:
        typer.echo(c)
    what = "held-out captions (never trained on)" if held_out else "training captions"
    typer.echo(f"{len(found)} of the {len(lists[which])} {what} of {model}"
               + (f" contain {search!r}" if search is not None else ""), err=True)
    if search is not None and not found:
        other = [c for c in lists["train" if held_out else "held_out"] if search.casefold() in c.casefold()]
        if other and not held_out:
            typer.echo(f"{len(other)} held-out caption(s) contain it (dfedit prompts --held-out --search "
                       f"{shlex.quote(search)}): the model never trained on them and draws most as smudges", err=True)
        raise typer.Exit(1)


def main():  # console-script entry point
    app()


if __name__ == "__main__":
    main()
