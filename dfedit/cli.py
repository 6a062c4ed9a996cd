"""`dfedit` command line: thin wrappers over dfedit.pipeline.DFEdit.

Every command validates its arguments, its output paths and the models' configs before loading
any weights, so bad input costs nothing and leaves nothing behind. DfeditError and click's usage
errors become one line on stderr and a non-zero exit; anything else is a bug and keeps its traceback.

The options every generating command shares (model, seed, guidance, stage II, output, device...)
are declared once in GEN_OPTIONS and added to each command's signature by @generating.
"""

import functools
import inspect
import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import cli_errors
from .cli_errors import OneLineErrors, error_handler
from .constants import DEFAULT_STAGE1, DEFAULT_STAGE2, SAMPLER_NAMES
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
                                               "(default 30: 34 model calls).")]
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
Prompt = Annotated[str, typer.Option("--prompt", "-p", help="Text prompt.")]
EditPrompt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="Text prompt (default: 'a high quality "
                                                   "photo' for IF; the empty prompt, the model's unconditional "
                                                   "branch, for emoji models, which on the built-in model gives "
                                                   "smudges rather than a clean emoji once much is regenerated, "
                                                   "as docs/gallery.md shows: give the caption the result should "
                                                   "have, e.g. --prompt 'grinning face').")]
Trajectory = Annotated[Optional[str], typer.Option("--trajectory", help="Also write a GIF of the process.")]
InputImage = Annotated[Path, typer.Argument(help="Input image (any size/mode; centre-cropped to the model size).")]


@dataclass
class GenOptions:
    model: str
    stage2: str
    upscale: Optional[bool]
    seed: int
    cfg: Optional[float]
    stride: Optional[int]
    steps: Optional[int]
    num_samples: int
    negative_prompt: str
    stage2_steps: int
    stage2_cfg: float
    noise_level: int
    sampler: str
    eta: float
    out: Optional[str]
    trajectory: Optional[str]
    device: str
    dtype: str
    offload: bool
    cache_dir: Optional[Path]
    quiet: bool
    threads: Optional[int] = None
    display: Optional[bool] = None
    style: Optional[str] = None
    _info: object = None

    @property
    def info(self):
        """--model as its backend describes it (dfedit.backends.ModelInfo), resolved once."""
        if self._info is None:
            from .backends import resolve
            self._info = resolve(self.model)
        return self._info

    def api(self):
        return _api(self.model, self.stage2, self.device, self.dtype, self.offload, self.cache_dir, self.quiet,
                    info=self.info, style=self.style)

    def run_kwargs(self) -> dict:
        return dict(seed=self.seed, cfg=self.cfg, stride=self.stride, steps=self.steps, num_samples=self.num_samples,
                    upscale=self.upscale, stage2_steps=self.stage2_steps, stage2_cfg=self.stage2_cfg,
                    noise_level=self.noise_level, negative_prompt=self.negative_prompt,
                    sampler=self.sampler, eta=self.eta,
                    record_every=3 if self.trajectory else 0)

    def check(self, df) -> bool:
        """Every option checkable from configs, before any weights load; returns whether stage II runs."""
        return df.check(stride=self.stride, steps=self.steps, sampler=self.sampler, eta=self.eta,
                        upscale=self.upscale, stage2_steps=self.stage2_steps, noise_level=self.noise_level)


def _opt(name, typ, default, *flags, **kw):
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[typ, typer.Option(*flags, **kw)])


GEN_OPTIONS = [
    inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_STAGE1, annotation=Model),
    inspect.Parameter("stage2", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_STAGE2, annotation=Stage2),
    _opt("upscale", Optional[bool], None, "--upscale/--no-upscale",
         help="Run stage II (default: on for IF models, off for emoji models)."),
    inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=Seed),
    _opt("style", Optional[str], None, "--style",
         help="Drawing set, for models trained on several (the built-in emoji model: google, twitter or fluent); "
              "default: none, so seeds vary across sets."),
    inspect.Parameter("cfg", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Cfg),
    inspect.Parameter("stride", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Stride),
    inspect.Parameter("steps", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Steps),
    _opt("num_samples", int, 1, "--num-samples", "-n", min=1,
         help=f"Images per setting, 1 to {MAX_SAMPLES} (shown as a grid, 8 per row)."),
    _opt("negative_prompt", str, "", "--negative-prompt", help="Unconditional prompt."),
    inspect.Parameter("stage2_steps", inspect.Parameter.KEYWORD_ONLY, default=50, annotation=Stage2Steps),
    inspect.Parameter("stage2_cfg", inspect.Parameter.KEYWORD_ONLY, default=4.0, annotation=Stage2Cfg),
    inspect.Parameter("noise_level", inspect.Parameter.KEYWORD_ONLY, default=250, annotation=NoiseLevel),
    inspect.Parameter("sampler", inspect.Parameter.KEYWORD_ONLY, default="ddpm", annotation=SamplerOpt),
    inspect.Parameter("eta", inspect.Parameter.KEYWORD_ONLY, default=0.0, annotation=Eta),
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Out),
    _opt("display", Optional[bool], None, "--display/--no-display",
         help="Also write OUT.display.png for a person to look at: the image enlarged (nearest-neighbour, at "
              "least 256 px), beside the input for sdedit and the input and mask for inpaint. Default: on "
              "for images under 128 px and for inpaint."),
    _opt("trajectory", Optional[str], None, "--trajectory",
         help="Also write a GIF of the x0 estimates every 3 steps (both stages)."),
    inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation=Device),
    inspect.Parameter("dtype", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation=Dtype),
    inspect.Parameter("offload", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Offload),
    inspect.Parameter("cache_dir", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=CacheDir),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Quiet),
    inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Threads),
]


handle_errors = error_handler("dfedit", cpu_oom_hint="try fewer --num-samples, or free some memory")


def generating(fn):
    """Add GEN_OPTIONS to a command; the command receives them as one `opts: GenOptions`, with the
    output paths and every option checkable from configs validated before it runs."""
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "opts"]
    names = [p.name for p in GEN_OPTIONS]

    @functools.wraps(fn)
    def wrapper(**kw):
        opts = GenOptions(**{k: kw.pop(k) for k in names})
        _threads(opts.threads)
        _check_gen_options(opts)
        inputs = [kw[k] for k in ("image", "mask") if kw.get(k) is not None]
        opts.out = _out_path(opts.out, fn.__name__, inputs)
        opts.trajectory = _gif_path(opts.trajectory, inputs)
        _protect_inputs(opts.out, opts.trajectory, inputs, display=opts.display is not False)
        return fn(opts=opts, **kw)

    wrapper.__signature__ = sig.replace(parameters=own + GEN_OPTIONS)
    wrapper.__annotations__ = {**fn.__annotations__, **{p.name: p.annotation for p in GEN_OPTIONS}}
    wrapper.__annotations__.pop("opts", None)
    del wrapper.__wrapped__  # Typer must see the new signature, not the original's
    return handle_errors(wrapper)


def _threads(threads: Optional[int]) -> None:
    """--threads (or the machine's default) for torch, before any work: see dfedit.devices.default_threads."""
    from .devices import set_threads
    set_threads(threads)


def _check_gen_options(opts: GenOptions) -> None:
    """What every generating command can check from its options alone, before anything loads."""
    from .pipeline import check_options
    check_options(seed=opts.seed, cfg=opts.cfg, stage2_cfg=opts.stage2_cfg, eta=opts.eta, num_samples=opts.num_samples)
    if opts.num_samples > MAX_SAMPLES:
        raise DfeditError(f"--num-samples {opts.num_samples} is more than {MAX_SAMPLES}, the most one run makes "
                          "(one 8 x 8 grid): run again with another --seed for more")
    _check_cache_dir(opts.cache_dir)


def _check_cache_dir(cache_dir: Optional[Path], must_write: bool = False) -> None:
    """The cache must be writable when the command's job is writing it (embed); elsewhere a cache
    that cannot be written costs one warning and the command runs without it (dfedit.cache)."""
    import os

    from .cache import cache_root
    from .files import writable_dir
    if not must_write:
        return
    root = cache_root(cache_dir)
    why = writable_dir(root)
    if why is not None:
        flag = "--cache-dir" if cache_dir is not None else ("DFEDIT_CACHE" if os.environ.get("DFEDIT_CACHE")
                                                            else "the cache directory")
        raise DfeditError(f"{flag} {root} cannot be used: {why}; pass a writable --cache-dir")


# Outputs we named (no --out) -> (command, number): saved without replacing anyone's file.
_AUTO_NAMED: dict[Path, tuple[str, int]] = {}


def _numbered(command: str, start: int = 0):
    for i in itertools.count(start):
        yield i, Path(f"dfedit-{command}.png" if i == 0 else f"dfedit-{command}-{i}.png")


def _free(p: Path) -> bool:
    from .images import display_path
    return not p.exists() and not display_path(p).exists()


def _out_path(out: Optional[Path], command: str, inputs=()) -> Path:
    """--out, or the first free dfedit-COMMAND[-N].png (checked now, claimed when saving); a name
    is free when neither it nor its display copy exists."""
    from .images import check_output
    if out is not None:
        return check_output(out)
    i, p = next((i, p) for i, p in _numbered(command) if _free(p))
    _AUTO_NAMED[p] = (command, i)
    return check_output(p)


def _protect_inputs(out: Path, gif: Optional[Path], inputs, display: bool = True) -> None:
    """No output may replace an input file (an image or mask), however it is spelled or linked."""
    from .images import display_path, same_file
    for inp in inputs:
        inp = Path(inp)
        for flag, o in (("--out", out), ("--trajectory", gif)):
            if o is not None and same_file(Path(o), inp):
                raise DfeditError(f"{flag} {o} is the input file {inp}: dfedit never overwrites its input; "
                                  f"choose another {flag}")
        if display and same_file(display_path(Path(out)), inp):
            raise DfeditError(f"--out {out} would put its display copy {display_path(Path(out))} over the input "
                              f"file {inp}: choose another --out, or pass --no-display")


def _api(model, stage2=DEFAULT_STAGE2, device="auto", dtype="auto", offload=False, cache_dir=None, quiet=False,
         info=None, style=None):
    import torch

    from .pipeline import DFEdit
    # One-shot CLI runs free each model as soon as the command is done with its stage.
    df = DFEdit(model=model, stage2=stage2, device=device, dtype=dtype, offload=offload,
                cache_dir=str(cache_dir) if cache_dir else None, quiet=quiet, keep_loaded=False, info=info,
                style=style)
    if df.device.type == "cpu" and df.dtype == torch.float16:
        typer.echo("note: float16 is many times slower than float32 on a CPU (it has no fast float16 kernels); "
                   "--dtype float32 (the CPU default) or bfloat16 is faster", err=True)
    return df


def _start(opts: GenOptions, prompts: list[str]):
    """The API object of a generating command, with every option checked from configs and
    tokenizers (no weights yet); returns (api, whether stage II runs)."""
    df = opts.api()
    df.check_prompts(list(prompts) + [opts.negative_prompt])
    return df, opts.check(df)


def _save(img, path: Path, meta: dict, quiet: bool, display=None) -> Path:
    """Write `img` with its metadata; `display` = (image, how it was made) also writes the display
    copy beside the final name. Returns the path written."""
    from .images import display_path, save_png
    from .pipeline import png_metadata
    meta = png_metadata(meta, command_line=" ".join(shlex.quote(a) for a in ["dfedit"] + cli_errors.ARGV))
    if path not in _AUTO_NAMED:
        save_png(img, path, meta)
    else:  # a run started beside this one may have taken the name meanwhile: take the next free one
        for _, path in _numbered(*_AUTO_NAMED[path]):
            if display is not None and display_path(path).exists():
                continue
            try:
                save_png(img, path, meta, exclusive=True)
                break
            except FileExistsError:
                continue
    if not quiet:
        typer.echo(f"wrote {path} ({img.width}x{img.height})", err=True)
    if display is not None:
        dimg, how = display
        dpath = display_path(path)
        save_png(dimg, dpath, {**meta, "display": {**how, "of": str(path)}})
        if not quiet:
            typer.echo(f"wrote {dpath} ({dimg.width}x{dimg.height}, a display copy)", err=True)
    return path


def _single(opts: GenOptions, img, meta: dict, panels=None, always: bool = False, outlined=()) -> None:
    """One result at the model's native size (what the next command reads), plus its display copy
    when asked for or by default (images under 128 px; `always` for inpaint): the image enlarged
    to at least 256 px, or the labelled `panels` [(tile, label), ...] that put it in context."""
    from .images import DISPLAY_SIZE, GRID_TILE, display_meta, enlarge, enlarge_factor, grid, grid_meta
    want = opts.display if opts.display is not None else (img.width < GRID_TILE or always)
    display = None
    if want:
        if panels:
            rows, labels = [[t for t, _ in panels]], [[lab for _, lab in panels]]
            display = grid(rows, labels, outlined=outlined), {**grid_meta(rows), "panels": labels[0]}
        else:
            k = enlarge_factor(img.width, DISPLAY_SIZE)
            display = enlarge(img, k), display_meta(img.width, k)
    _save(img, opts.out, meta, opts.quiet, display)


def _sheet(path: Path, rows, labels, meta: dict, quiet: bool, outlined=()) -> None:
    """A labelled grid (tiles enlarged to at least 128 px), recording its enlargement."""
    from .images import grid, grid_meta
    _save(grid(rows, labels, outlined=outlined), path, {**meta, "display": grid_meta(rows)}, quiet)


def _as_read(res, prompts: list[str]) -> list[str]:
    """Prompts as the model read them (emoji as their names), for tile captions: the grid's font
    has no emoji."""
    return res.meta.get("encoded_prompts", prompts)


def _numbered_labels(base: str, n: int) -> list[str]:
    return [base] if n == 1 else [f"{base} #{k + 1}" for k in range(n)]


# ---- generating commands -------------------------------------------------------------------------

@app.command()
@generating
def sample(prompt: Annotated[str, typer.Argument(help="Text prompt. On an emoji model: one of its captions "
                                                "(dfedit prompts --model emoji lists them; typed emoji are read as "
                                                "their names); the empty prompt \"\" draws smudges, not an emoji.")],
           opts: GenOptions = None):
    """Generate images from a prompt with the hand-written strided sampler (+ stage II)."""
    from .images import wrap
    df, _ = _start(opts, [prompt])
    res = df.sample(prompt, **opts.run_kwargs())
    tiles = res.pil()
    if len(tiles) == 1:
        _single(opts, tiles[0], res.meta)
    else:
        _sheet(opts.out, *wrap(tiles, _numbered_labels(_as_read(res, [prompt])[0], len(tiles))), res.meta,
               opts.quiet)
    _trajectory(opts, [res])


@app.command()
@generating
def sdedit(image: InputImage,
           prompt: EditPrompt = None,
           i_start: Annotated[list[int], typer.Option("--i-start", help="Start index into the strided timesteps, "
                                                     "0..33 at stride 30 (0: t=990, almost pure noise; higher: "
                                                     "less noise, a smaller change). Repeatable: several give a "
                                                     "sweep.")] = [5],
           repeat: Annotated[int, typer.Option("--repeat", min=1, help="Feed the result back K times.")] = 1,
           opts: GenOptions = None):
    """SDEdit: noise IMAGE to timestep index --i-start and denoise it with --prompt."""
    from .edits import check_i_start
    from .images import load_image, to_pil, wrap
    from .sampler import plan_timesteps
    info = opts.info
    prompt = info.default_prompt if prompt is None else prompt
    ts = plan_timesteps(info.schedule, opts.sampler, opts.stride, opts.steps)
    for i in i_start:
        check_i_start(i, ts, opts.stride or 30, opts.steps)
    load_image(image, info.sample_size)  # the input must decode before any model loads
    df, _ = _start(opts, [prompt])
    # The whole sweep in one model lifetime: every stage I entry on one load, then stage II on one.
    results = df.sdedit_sweep(image, prompt, list(i_start), repeat=repeat, **opts.run_kwargs())
    for r in results:
        r.meta.update(input=str(image), i_start=list(i_start))
    out_size = results[0].images.shape[-1]
    shown = to_pil(load_image(image, out_size))[0]  # the input as the output's size shows it
    names = [f"i_start={i} (t={ts[i]})" for i in i_start]
    tiles = [r.pil() for r in results]
    if len(results) == 1 and len(tiles[0]) == 1:
        _single(opts, tiles[0][0], results[0].meta, panels=[(shown, "original"), (tiles[0][0], names[0])])
    else:
        rows, labels = [], []
        for name, row in zip(names, tiles):
            r, lab = wrap([shown] + row, ["original"] + _numbered_labels(name, len(row)), ncol=9)
            rows += r
            labels += lab
        _sheet(opts.out, rows, labels, results[0].meta, opts.quiet)
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
            opts: GenOptions = None):
    """RePaint inpainting: regenerate the white part of --mask, keep the rest exactly. Writes the result
    (OUT) and original | mask | result (OUT.display.png)."""
    from .images import open_image, to_pil, wrap
    from .pipeline import image_at, mask_at
    from .sampler import check_sampler
    check_sampler(opts.sampler, opts.eta, resampling=jump_n_sample > 1)
    prompt = opts.info.default_prompt if prompt is None else prompt
    img, m = open_image(image), open_image(mask, "mask")  # both must decode before any model loads
    df, _ = _start(opts, [prompt])
    res = df.inpaint(img, m, prompt, invert_mask=invert_mask, jump_length=jump_length, jump_n_sample=jump_n_sample,
                     **opts.run_kwargs())
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
        _sheet(opts.out, *wrap([shown, mask_tile] + tiles, ["original", mask_label] +
                               _numbered_labels("result", len(tiles))), res.meta, opts.quiet, outlined={(0, 1)})
    _trajectory(opts, [res])


@app.command()
@generating
def anagram(prompts: Annotated[list[str], typer.Argument(help="One prompt per view (first: as shown).")],
            view: Annotated[list[str], typer.Option("--view", help="View(s) for the 2nd, 3rd... prompt: flip, "
                                                    "rotate_cw, rotate_ccw, rotate_180, negate, skew, "
                                                    "patch_permute, pixel_permute, jigsaw.")] = ["flip"],
            view_seed: Annotated[int, typer.Option("--view-seed", help="Seed of the permutation views.")] = 0,
            opts: GenOptions = None):
    """Visual anagram: one image that shows PROMPT_A, and PROMPT_B under --view (N-way with more)."""
    from .pipeline import check_seed
    from .views import VIEWS, check_views, make_view
    views = ["identity"] + list(view)
    check_views(views, offered=[v for v in VIEWS if v != "identity"])
    if len(prompts) != len(views):
        raise DfeditError(f"{len(views)} views (identity + {len(view)} --view) need {len(views)} prompts, "
                          f"got {len(prompts)}")
    check_seed(view_seed, "view_seed")
    df, _ = _start(opts, list(prompts))
    res = df.anagram(list(prompts), views, view_seed=view_seed, **opts.run_kwargs())
    # Show every sample under every view: row = sample, column = view.
    size = res.images.shape[-1]
    vs = [make_view(v, size, view_seed) for v in views]
    from .images import to_pil
    rows = [[to_pil(v.apply(res.images[j:j + 1]))[0] for v in vs] for j in range(res.images.shape[0])]
    labels = [[f"{v}: {p}"[:40] for v, p in zip(views, _as_read(res, prompts))] for _ in rows]
    _sheet(opts.out, rows, labels, res.meta, opts.quiet)
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
           opts: GenOptions = None):
    """Hybrid image: low frequencies from the first prompt, high from the last (factorized diffusion)."""
    from .edits import check_hybrid_kernel, frequency_split
    from .images import wrap
    frequency_split(split, 64, len(prompts), kernel, sigma)  # validate before loading anything
    if split == "color" and (kernel is not None or sigma is not None):
        raise DfeditError("--kernel and --sigma shape the Gaussian split; --split color does not use them")
    if split == "gaussian":
        check_hybrid_kernel(kernel, sigma, opts.info.sample_size, len(prompts))
    df, _ = _start(opts, list(prompts))
    res = df.hybrid(list(prompts), split=split, kernel=kernel, sigma=sigma, **opts.run_kwargs())
    tiles = res.pil()
    if len(tiles) == 1:
        _single(opts, tiles[0], res.meta)
    else:
        _sheet(opts.out, *wrap(tiles, _numbered_labels(" + ".join(_as_read(res, prompts)), len(tiles))), res.meta,
               opts.quiet)
    _trajectory(opts, [res])


def _gif_path(trajectory: Optional[Path], inputs=()) -> Optional[Path]:
    """Validate a --trajectory path up front, like --out."""
    if trajectory is None:
        return None
    from .images import check_output
    return check_output(trajectory, ".gif", "trajectory")


def _write_gif(frames, path: Path, meta: dict, quiet: bool) -> None:
    from .trajectory import save_trajectory
    save_trajectory(frames, path, meta)
    if not quiet:
        typer.echo(f"wrote {path}", err=True)


def _trajectory(opts: GenOptions, results) -> None:
    if opts.trajectory is not None:
        _write_gif([f for r in results for f in r.frames], opts.trajectory, results[0].meta, opts.quiet)


# ---- diagnostic commands (model size, no stage II) -----------------------------------------------

@app.command()
@handle_errors
def noise(image: InputImage,
          t: Annotated[list[int], typer.Option("--t", help="Timestep(s) to noise to (repeatable).")] = [250, 500, 750],
          model: Model = DEFAULT_STAGE1, seed: Seed = 0, out: Out = None, trajectory: Trajectory = None,
          quiet: Quiet = False, threads: Threads = None):
    """Forward process: the image noised to each --t, side by side with the original."""
    from .backends import resolve
    from .images import load_image, to_pil
    from .pipeline import check_seed
    _threads(threads)
    check_seed(seed)
    path = _out_path(out, "noise", [image])
    gif = _gif_path(trajectory, [image])
    _protect_inputs(path, gif, [image], display=False)
    info = resolve(model)
    schedule, size = info.schedule, info.sample_size
    ts = [schedule.check_t(v) for v in t]
    x0 = load_image(image, size)
    df = _api(model, quiet=quiet, device="cpu", info=info)
    noisy = df.noise(x0, ts, seed=seed)
    ims = [to_pil(x0)[0]] + [to_pil(x)[0] for x in noisy]
    meta = {"command": "noise", "input": str(image), "t": ts, "seed": seed, "model": model}
    _sheet(path, [ims], [["original"] + [f"t={v}" for v in ts]], meta, quiet)
    if gif is not None:  # one noise draw, t = 0, 30, ..., 990: the forward process as a film
        import torch
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        frames = [schedule.add_noise(x0, eps, t) for t in range(0, schedule.num_train_timesteps, 30)]
        _write_gif(frames, gif, meta, quiet)


@app.command()
@handle_errors
def denoise(image: InputImage,
            t: Annotated[Optional[list[int]], typer.Option("--t", help="Noise level(s) (repeatable; default 690).")] = None,
            i_start: Annotated[Optional[int], typer.Option("--i-start", help="Start index into the strided "
                                                           "timesteps instead of --t (10 -> t=690).")] = None,
            prompt: EditPrompt = None,
            blur_kernel: Annotated[int, typer.Option("--blur-kernel", help="Gaussian baseline kernel size (odd).")] = 5,
            blur_sigma: Annotated[float, typer.Option("--blur-sigma", help="Gaussian baseline sigma.")] = 2.0,
            model: Model = DEFAULT_STAGE1, seed: Seed = 0, cfg: Cfg = None, stride: Stride = None,
            steps: Steps = None, sampler: SamplerOpt = "ddpm", eta: Eta = 0.0,
            out: Out = None, trajectory: Trajectory = None, device: Device = "auto", dtype: Dtype = "auto",
            offload: Offload = False, cache_dir: CacheDir = None, quiet: Quiet = False, threads: Threads = None):
    """Noisy | Gaussian blur | one-step | iterative denoising, one row per t (course part 1.2-1.4)."""
    _threads(threads)
    from .backends import resolve
    from .edits import check_i_start
    from .filters import check_blur
    from .images import load_image, to_pil
    from .pipeline import check_finite, check_seed
    from .sampler import check_sampler, plan_timesteps, sampler_meta
    if t and i_start is not None:
        raise DfeditError("give either --t or --i-start, not both")
    check_seed(seed)
    check_finite(cfg, "cfg")
    check_finite(blur_sigma, "blur_sigma")
    check_finite(eta, "eta")
    _check_cache_dir(cache_dir)
    path = _out_path(out, "denoise", [image])
    gif = _gif_path(trajectory, [image])
    _protect_inputs(path, gif, [image], display=False)
    check_sampler(sampler, eta)
    info = resolve(model)
    schedule, size = info.schedule, info.sample_size
    check_blur(blur_kernel, blur_sigma, size, "blur_kernel", "blur_sigma")  # before anything loads
    prompt = info.default_prompt if prompt is None else prompt
    grid_ts = plan_timesteps(schedule, sampler, stride, steps)
    if i_start is not None:
        ts = [grid_ts[check_i_start(i_start, grid_ts, stride or 30, steps)]]
    else:
        ts = [schedule.check_t(v) for v in (t or [690])]
    x0 = load_image(image, size)
    df = _api(model, device=device, dtype=dtype, offload=offload, cache_dir=cache_dir, quiet=quiet, info=info)
    rows = df.denoise(x0, ts, prompt=prompt, seed=seed, cfg=cfg, stride=stride, steps=steps, sampler=sampler,
                      eta=eta, blur_kernel=blur_kernel, blur_sigma=blur_sigma, record_every=1 if gif else 0)
    cols = ["noisy", "blur", "one_step", "iterative"]
    tiles = [[to_pil(x0)[0]] + [to_pil(r[c])[0] for c in cols] for r in rows]
    labels = [["original", f"t={r['t']} noisy", "gaussian blur", "one-step", "iterative"] for r in rows]
    meta = {"command": "denoise", "input": str(image), "t": ts, **df.prompt_meta([prompt]), "seed": seed,
            "cfg": rows[0]["cfg"],
            "stride": (stride or 30) if steps is None else None, "steps": steps, **sampler_meta(sampler, eta),
            "model": model, "blur_kernel": blur_kernel, "blur_sigma": blur_sigma}
    _sheet(path, tiles, labels, meta, quiet)
    if gif is not None:
        _write_gif([f for r in rows for f in r["frames"]], gif, meta, quiet)


@app.command()
@handle_errors
def embed(prompts: Annotated[list[str], typer.Argument(help="Prompts to embed into the cache.")],
          model: Model = DEFAULT_STAGE1, device: Device = "auto", dtype: Dtype = "auto",
          offload: Offload = False, cache_dir: CacheDir = None, quiet: Quiet = False, threads: Threads = None):
    """Compute prompt embeddings into the on-disk cache (T5 loads only for new prompts)."""
    _threads(threads)
    _check_cache_dir(cache_dir, must_write=True)  # filling it is the whole job
    df = _api(model, device=device, dtype=dtype, offload=offload, cache_dir=cache_dir, quiet=quiet)
    df.check(upscale=False, prompts=list(prompts))
    df.embed(list(prompts) + [""])  # "" is the unconditional prompt every guided command needs
    if not quiet:
        typer.echo(f"cached {len(prompts)} prompt(s) (+ the empty prompt)", err=True)


@app.command()
@handle_errors
def upscale(image: Annotated[Path, typer.Argument(help="Low-res image (centre-cropped to stage I's size).")],
            prompt: Annotated[str, typer.Option("--prompt", help="Prompt describing the image.")] = "",
            model: Model = DEFAULT_STAGE1, stage2: Stage2 = DEFAULT_STAGE2, seed: Seed = 0,
            stage2_steps: Stage2Steps = 50, stage2_cfg: Stage2Cfg = 4.0, noise_level: NoiseLevel = 250,
            sampler: SamplerOpt = "ddpm", eta: Eta = 0.0,
            out: Out = None, trajectory: Trajectory = None, device: Device = "auto", dtype: Dtype = "auto",
            offload: Offload = False, cache_dir: CacheDir = None, quiet: Quiet = False, threads: Threads = None):
    """Run IF stage II on an existing low-resolution image (IF models only)."""
    _threads(threads)
    from .backends import resolve
    from .images import load_image
    from .pipeline import check_finite, check_seed
    from .sampler import check_sampler
    check_seed(seed)
    check_finite(stage2_cfg, "stage2_cfg")
    check_finite(eta, "eta")
    _check_cache_dir(cache_dir)
    path = _out_path(out, "upscale", [image])
    gif = _gif_path(trajectory, [image])
    _protect_inputs(path, gif, [image], display=False)
    check_sampler(sampler, eta)
    info = resolve(model)
    info.backend.check_upscale(info, stage2, stage2_steps, noise_level)
    x = load_image(image, info.sample_size)
    df = _api(model, stage2, device, dtype, offload, cache_dir, quiet, info=info)
    if info.upscales:  # its stage II reads the prompt with stage I's text encoder (IF's T5)
        df.check_prompts([prompt])
    r = df.upscale(x, prompt, seed=seed, steps=stage2_steps, cfg=stage2_cfg, noise_level=noise_level,
                   record_every=3 if gif else 0, sampler=sampler, eta=eta)
    meta = {**r.meta, "input": str(image), "model": model}
    _save(r.pil()[0], path, meta, quiet)
    if gif is not None:
        _write_gif(r.frames, gif, meta, quiet)


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
    _threads(threads)
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
