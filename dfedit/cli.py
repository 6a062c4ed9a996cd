"""`dfedit` command line: thin wrappers over dfedit.pipeline.DFEdit.

Every command validates its arguments and the output path before loading any model, so bad input
costs nothing and leaves nothing behind; DfeditError becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import DfeditError
from .models import DEFAULT_STAGE1, DEFAULT_STAGE2

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Edit images with pixel-space diffusion models (DeepFloyd IF, or a dfedit-train model).")

Model = Annotated[str, typer.Option("--model", help="Stage I: Hub id or local diffusers directory "
                                    "(or a dfedit-train checkpoint directory).")]
Stage2 = Annotated[str, typer.Option("--stage2", help="Stage II upscaler: Hub id or local directory.")]
Upscale = Annotated[Optional[bool], typer.Option("--upscale/--no-upscale",
                                                 help="Run stage II (default: on for IF models).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the CPU generator all random draws come from.")]
Cfg = Annotated[float, typer.Option("--cfg", help="Classifier-free guidance scale (1 = no guidance).")]
Stride = Annotated[int, typer.Option("--stride", help="Timestep stride: t = 990, 990-stride, ..., 0.")]
NumSamples = Annotated[int, typer.Option("--num-samples", "-n", min=1, help="Images to generate (one grid).")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output PNG (default: dfedit-<command>.png, "
                                             "never overwriting an existing default file).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (fp16 on GPU, fp32 on CPU), float16, bfloat16, float32.")]
Offload = Annotated[bool, typer.Option("--offload", help="Keep weights in CPU RAM and stream them to the GPU "
                                       "layer by layer (slow; for GPUs with too little memory).")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Embedding cache (default "
                                                  "$DFEDIT_CACHE or ~/.cache/dfedit).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Stage2Steps = Annotated[int, typer.Option("--stage2-steps", help="Stage II steps (diffusers spacing).")]
Stage2Cfg = Annotated[float, typer.Option("--stage2-cfg", help="Stage II guidance scale.")]
NoiseLevel = Annotated[int, typer.Option("--noise-level", help="Noise added to the low-res image for stage II.")]


def _fail(msg: str, code: int = 1):
    typer.echo(f"dfedit: error: {msg}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """One clear line and a non-zero exit for anything the user can fix; bugs keep their traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DfeditError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted; no output was written", 130)
        except MemoryError:
            _fail("out of memory: try --offload, --dtype float16 or fewer --num-samples")
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                _fail("the GPU ran out of memory: try --offload or fewer --num-samples")
            raise
    return wrapper


def _out_path(out: Optional[Path], command: str) -> Path:
    from .images import check_output
    if out is not None:
        return check_output(out)
    p, i = Path(f"dfedit-{command}.png"), 1
    while p.exists():
        p, i = Path(f"dfedit-{command}-{i}.png"), i + 1
    return check_output(p)


def _api(model, stage2=DEFAULT_STAGE2, device="auto", dtype="auto", offload=False, cache_dir=None, quiet=False):
    from .pipeline import DFEdit
    # One-shot CLI runs free each model as soon as its stage is done.
    return DFEdit(model=model, stage2=stage2, device=device, dtype=dtype, offload=offload,
                  cache_dir=str(cache_dir) if cache_dir else None, quiet=quiet, keep_loaded=False)


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["dfedit"] + sys.argv[1:])


def _save(img, path: Path, meta: dict, quiet: bool) -> None:
    from .images import save_png
    meta = {**meta, "command_line": _command_line(), "dfedit_version": _version()}
    save_png(img, path, meta)
    if not quiet:
        typer.echo(f"wrote {path}", err=True)


def _version() -> str:
    from . import __version__
    return __version__


@app.command()
@handle_errors
def sample(prompt: Annotated[str, typer.Argument(help="Text prompt.")],
           model: Model = DEFAULT_STAGE1, stage2: Stage2 = DEFAULT_STAGE2, upscale: Upscale = None,
           seed: Seed = 0, cfg: Cfg = 7.0, stride: Stride = 30, num_samples: NumSamples = 1,
           negative_prompt: Annotated[str, typer.Option("--negative-prompt", help="Unconditional prompt.")] = "",
           stage2_steps: Stage2Steps = 50, stage2_cfg: Stage2Cfg = 4.0, noise_level: NoiseLevel = 250,
           out: Out = None, device: Device = "auto", dtype: Dtype = "auto", offload: Offload = False,
           cache_dir: CacheDir = None, quiet: Quiet = False):
    """Generate images from a prompt with the hand-written strided sampler (+ stage II)."""
    from .images import grid
    path = _out_path(out, "sample")
    df = _api(model, stage2, device, dtype, offload, cache_dir, quiet)
    res = df.sample(prompt, seed=seed, cfg=cfg, stride=stride, num_samples=num_samples, upscale=upscale,
                    stage2_steps=stage2_steps, stage2_cfg=stage2_cfg, noise_level=noise_level,
                    negative_prompt=negative_prompt)
    ims = res.pil()
    _save(ims[0] if len(ims) == 1 else grid([ims]), path, res.meta, quiet)


@app.command()
@handle_errors
def noise(image: Annotated[Path, typer.Argument(help="Input image (any size/mode; centre-cropped).")],
          t: Annotated[list[int], typer.Option("--t", help="Timestep(s) to noise to (repeatable).")] = [250, 500, 750],
          model: Model = DEFAULT_STAGE1, seed: Seed = 0, out: Out = None, quiet: Quiet = False):
    """Forward process: the image noised to each --t, side by side with the original."""
    from .images import grid, load_image, to_pil
    from .pipeline import _schedule_for, model_size
    path = _out_path(out, "noise")
    schedule = _schedule_for(model)
    ts = [schedule.check_t(v) for v in t]
    x0 = load_image(image, model_size(model))
    df = _api(model, quiet=quiet, device="cpu")
    noisy = df.noise(x0, ts, seed=seed)
    ims = [to_pil(x0)[0]] + [to_pil(x)[0] for x in noisy]
    meta = {"command": "noise", "input": str(image), "t": ts, "seed": seed, "model": model}
    _save(grid([ims], [["original"] + [f"t={v}" for v in ts]]), path, meta, quiet)


@app.command()
@handle_errors
def denoise(image: Annotated[Path, typer.Argument(help="Clean input image to noise and denoise.")],
            t: Annotated[Optional[list[int]], typer.Option("--t", help="Noise level(s) (repeatable; default 690).")] = None,
            i_start: Annotated[Optional[int], typer.Option("--i-start", help="Start index into the strided "
                                                           "timesteps instead of --t (10 -> t=690).")] = None,
            prompt: Annotated[str, typer.Option("--prompt")] = "a high quality photo",
            blur_kernel: Annotated[int, typer.Option("--blur-kernel", help="Gaussian baseline kernel size.")] = 5,
            blur_sigma: Annotated[float, typer.Option("--blur-sigma", help="Gaussian baseline sigma.")] = 2.0,
            model: Model = DEFAULT_STAGE1, seed: Seed = 0, cfg: Cfg = 7.0, stride: Stride = 30,
            out: Out = None, device: Device = "auto", dtype: Dtype = "auto", offload: Offload = False,
            cache_dir: CacheDir = None, quiet: Quiet = False):
    """Noisy | Gaussian blur | one-step | iterative denoising, one row per t (course part 1.2-1.4)."""
    from .filters import gaussian_kernel1d
    from .images import grid, load_image, to_pil
    from .pipeline import _schedule_for, model_size
    if t and i_start is not None:
        raise DfeditError("give either --t or --i-start, not both")
    path = _out_path(out, "denoise")
    gaussian_kernel1d(blur_kernel, blur_sigma)  # validate before loading anything
    schedule = _schedule_for(model)
    grid_ts = schedule.strided_timesteps(stride)
    if i_start is not None:
        if not 0 <= i_start < len(grid_ts):
            raise DfeditError(f"--i-start must be between 0 and {len(grid_ts) - 1} for stride {stride}, got {i_start}")
        ts = [grid_ts[i_start]]
    else:
        ts = [schedule.check_t(v) for v in (t or [690])]
    x0 = load_image(image, model_size(model))
    df = _api(model, device=device, dtype=dtype, offload=offload, cache_dir=cache_dir, quiet=quiet)
    rows = df.denoise(x0, ts, prompt=prompt, seed=seed, cfg=cfg, stride=stride, blur_kernel=blur_kernel,
                      blur_sigma=blur_sigma)
    cols = ["noisy", "blur", "one_step", "iterative"]
    tiles = [[to_pil(r[c])[0] for c in cols] for r in rows]
    labels = [[f"t={r['t']} noisy", "gaussian blur", "one-step", "iterative"] for r in rows]
    tiles = [[to_pil(x0)[0]] + row for row in tiles]
    labels = [["original"] + row for row in labels]
    meta = {"command": "denoise", "input": str(image), "t": ts, "prompt": prompt, "seed": seed, "cfg": cfg,
            "stride": stride, "model": model, "blur_kernel": blur_kernel, "blur_sigma": blur_sigma}
    _save(grid(tiles, labels), path, meta, quiet)


@app.command()
@handle_errors
def embed(prompts: Annotated[list[str], typer.Argument(help="Prompts to embed into the cache.")],
          model: Model = DEFAULT_STAGE1, device: Device = "auto", dtype: Dtype = "auto",
          offload: Offload = False, cache_dir: CacheDir = None, quiet: Quiet = False):
    """Compute prompt embeddings into the on-disk cache (T5 loads only for new prompts)."""
    df = _api(model, device=device, dtype=dtype, offload=offload, cache_dir=cache_dir, quiet=quiet)
    df.embed(list(prompts) + [""])  # "" is the unconditional prompt every guided command needs
    if not quiet:
        typer.echo(f"cached {len(prompts)} prompt(s) (+ the empty prompt)", err=True)


@app.command()
@handle_errors
def upscale(image: Annotated[Path, typer.Argument(help="Low-res image (centre-cropped to stage I's size).")],
            prompt: Annotated[str, typer.Option("--prompt", help="Prompt describing the image.")] = "",
            model: Model = DEFAULT_STAGE1, stage2: Stage2 = DEFAULT_STAGE2, seed: Seed = 0,
            stage2_steps: Stage2Steps = 50, stage2_cfg: Stage2Cfg = 4.0, noise_level: NoiseLevel = 250,
            out: Out = None, device: Device = "auto", dtype: Dtype = "auto", offload: Offload = False,
            cache_dir: CacheDir = None, quiet: Quiet = False):
    """Run IF stage II on an existing low-resolution image."""
    from .images import load_image
    from .pipeline import make_generator, model_size
    from .images import to_pil
    path = _out_path(out, "upscale")
    x = load_image(image, model_size(model))
    df = _api(model, stage2, device, dtype, offload, cache_dir, quiet)
    y = df.upscale(x, prompt, generator=make_generator(seed), steps=stage2_steps, cfg=stage2_cfg,
                   noise_level=noise_level)
    meta = {"command": "upscale", "input": str(image), "prompt": prompt, "seed": seed, "stage2": stage2,
            "stage2_steps": stage2_steps, "stage2_cfg": stage2_cfg, "noise_level": noise_level, "model": model}
    _save(to_pil(y)[0], path, meta, quiet)


def main():  # console-script entry point
    app()


if __name__ == "__main__":
    main()
