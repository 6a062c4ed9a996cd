"""`dfedit` command line: options -> one plan -> an edit -> the loop -> output files.

Each command turns its options into one `Plan` (dfedit.plan) and one `Edit` (dfedit.edits) before
any weights load; the library raises a `ParamError` for a bad value and cli_errors names the flag
it came from, so every option is checked once, in one place, and bad input costs nothing and
leaves nothing behind. Output paths are checked (and kept off the inputs) before anything is read;
dfedit.outputs names, draws and writes them.

The options the commands share are declared once in dfedit/cli_options.py and added to each
command's signature by @options(...); the command receives them as one `Options`.
"""

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import cli_errors
from .cli_errors import OneLineErrors
from .cli_options import (EditPrompt, InputImage, Options, check_cache_dir, generating, library, options,
                          start)
from .constants import DEFAULT_STRIDE, SPLIT_NAMES, VIEW_NAMES
from .errors import DfeditError

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Edit images with pixel-space diffusion models: DeepFloyd IF (the default, GPU) or "
                       "--model emoji, the built-in 32 px emoji model that runs offline on any CPU "
                       "(try: dfedit sample \"grinning face\" --model emoji).")

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
    df, plan = start(opts, [prompt])
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
    df, plan = start(opts, [prompt])
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
    df, plan = start(opts, [prompt], resampling=edit.resamples)
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
    edit = edits.anagram(list(prompts), views, view_seed, offered=VIEW_NAMES, base_size=opts.info.sample_size)
    df, plan = start(opts, list(prompts))
    res = df.generate(edit, plan)
    # Show every sample under every view: row = sample, column = view.
    vs = [make_view(v, res.images.shape[-1], view_seed, base=opts.info.sample_size) for v in views]
    rows = [[to_pil(v.apply(res.images[j:j + 1]))[0] for v in vs] for j in range(res.images.shape[0])]
    labels = [[f"{v}: {p}"[:40] for v, p in zip(views, _as_read(res, prompts))] for _ in rows]
    _sheet(opts, rows, labels, res.meta)
    _trajectory(opts, [res])


@app.command()
@generating
def hybrid(prompts: Annotated[list[str], typer.Argument(help="Two or three prompts: low frequencies, (a middle "
                                                        "band,) high frequencies.")],
           split: Annotated[str, typer.Option("--split", help=f"How the image is factorized: {', '.join(SPLIT_NAMES)} "
                                              "(gaussian: low / high frequencies; color: grayscale / colour; "
                                              "motion_blur: a horizontal streak / what it removes; scaling: a "
                                              "small copy / its detail).")] = "gaussian",
           kernel: Annotated[Optional[int], typer.Option("--kernel", help="Gaussian kernel size at 64 px, odd "
                                                         "(default 33; scaled with the model size); for "
                                                         "motion_blur the streak's length (default 9).")] = None,
           sigma: Annotated[Optional[float], typer.Option("--sigma", help="Gaussian sigma at 64 px (default 2).")] = None,
           opts: Options = None):
    """Hybrid image: low frequencies from the first prompt, high from the last (factorized diffusion)."""
    from . import edits
    edit = edits.hybrid(list(prompts), opts.info.sample_size, split, kernel, sigma)
    df, plan = start(opts, list(prompts))
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
    noisy = library(opts, device="cpu").noise(x0, ts, seed=opts.seed)
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
    df = library(opts)
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
    check_cache_dir(opts.cache_dir)  # filling it is the whole job
    library(opts).embed(list(prompts) + [""])  # "" is the unconditional prompt every guided command needs
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
    df = library(opts)
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
@options("threads")
def prompts(model: Annotated[str, typer.Option("--model", help="An emoji model: emoji (built in) or an "
                                               "exported dfedit-train model.")] = "emoji",
            search: Annotated[Optional[str], typer.Option("--search", "-s", help="Only captions containing this "
                                                          "text (any case).")] = None,
            held_out: Annotated[bool, typer.Option("--held-out", help="List the held-out captions instead: the "
                                                   "model never trained on them and draws most as smudges.")] = False,
            opts: Options = None):
    """List the prompts an emoji model knows: the captions it was trained on, one a line (CLDR emoji
    names such as "grinning face" or "flag: Japan"; typed emoji are read as these names)."""
    from .backends.emoji import Emoji, known_captions
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
