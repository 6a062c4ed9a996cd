"""`dfedit-train`: emoji (train / resume), eval, data. Bad input -> one line on stderr, exit 1.

Every option is checked before any data is prepared or any weights load; SIGINT / SIGTERM give
one line and exit 130 / 143 at any moment (see signals.py), with a checkpoint once training runs.
"""

from __future__ import annotations

import sys

from .signals import install_startup_handlers, running_as_program

if running_as_program(__name__):  # before the heavy imports below: Ctrl-C there is one line, exit 130
    install_startup_handlers()

import functools  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402

from dfedit.cli_errors import OneLineErrors, error_handler  # noqa: E402
from dfedit.errors import DfeditError  # noqa: E402

from dfedit.constants import DEFAULT_SAMPLER, SAMPLER_NAMES  # noqa: E402

from .launch import is_rank0, relaunch_under_torchrun  # noqa: E402
from .options import given_options, objective_help, schedule_name  # noqa: E402
from .options import preset_defaults as _presets  # noqa: E402
from .signals import Terminated, install_raising_handlers  # noqa: E402


class _OneLineErrors(OneLineErrors):
    prefix = "dfedit-train"


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train a text-conditional emoji U-Net that dfedit can sample and edit with.")


_errors = error_handler("dfedit-train", "lower --batch-size (with --grad-accum to keep the batch)")


def one_line_errors(fn):
    """One `dfedit-train: error:` line for anything the user can fix, SIGINT (130) and SIGTERM (143)
    included; while the command runs, those signals raise so that `finally` blocks clean up."""
    inner = _errors(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # torch is imported lazily by dfedit now; import it here, still in the start-up phase, where a
        # signal leaves at once: a KeyboardInterrupt inside `import torch` can abort in C++.
        import torch  # noqa: F401

        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        install_raising_handlers()
        try:
            return inner(*args, **kwargs)
        except Terminated:
            typer.echo("dfedit-train: error: terminated (SIGTERM)", err=True)
            raise typer.Exit(143)
        finally:
            for s, h in old.items():
                if h is not None:
                    signal.signal(s, h)

    return wrapper


def check_out_dir(out: Path) -> None:
    """--out must be (or become) a directory we can write, found before any data is prepared."""
    if out.exists() and not out.is_dir():
        raise DfeditError(f"--out {out} is a file, not a run directory")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DfeditError(f"cannot create --out {out}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DfeditError(f"cannot write --out {out}: {parent} is not writable (permission denied)")


def _on_off(v) -> str:
    return "on" if v else "off"


# Options of `emoji` that set no config field.
_NOT_CONFIG = ("out", "preset", "restart", "cpu", "quiet", "threads", "max_steps", "max_cpu_seconds")


@app.command()
@one_line_errors
def emoji(
    data: Optional[str] = typer.Option(None, help="npm tarball/package dir, Kaggle emojiimage-dataset dir, or a "
                                       "folder of PNGs + captions CSV (default: fetch the npm package)"),
    vendor: Optional[str] = typer.Option(None, help="google, twitter, apple or facebook (default: google)"),
    base_only: Optional[bool] = typer.Option(None, "--base-only", help="drop skin-tone variants"),
    sets: Optional[str] = typer.Option(None, help="(default: none, one set) several drawing sets of each emoji, "
                                       "e.g. google,twitter,fluent, fetched with npm, in place of the data and vendor options"),
    styles: Optional[bool] = typer.Option(None, "--styles/--no-styles", help="(default: on with several sets) the "
                                          "drawing set as the model's own style input (dfedit's style option)"),
    style_dropout: Optional[float] = typer.Option(None, help="(default: 0.3 with styles) probability of training "
                                                  "with 'any style'"),
    caption_variants: Optional[bool] = typer.Option(None, "--caption-variants/--names-only",
                                                    help="(default: variants with several sets) each step draws one "
                                                    "of the emoji's captions: name, 'X emoji', short names, keywords"),
    pair_holdout: Optional[float] = typer.Option(None, help="(default: 0.1 with several sets) fraction of (emoji, "
                                                 "skin tone) and (emoji, set) pairs held out for evaluation"),
    tone_share: Optional[float] = typer.Option(None, help="(default: 1) with several sets: sampling weight of an "
                                               "emoji's skin-tone variants together, against 1 for its base image"),
    init_from: Optional[str] = typer.Option(None, help="(default: none) start a new run from this model's weights "
                                            "(a run, an exported model, or emoji) where names and shapes match"),
    dropout: Optional[float] = typer.Option(None, help="dropout in the ResNet blocks (default: 0)"),
    val_fraction: Optional[float] = typer.Option(None, help="fraction of base emoji held out entirely "
                                                 "(default: 0.1; 0 trains on every emoji)"),
    out: Path = typer.Option(Path("runs/emoji"), help="run directory; rerun on it to resume"),
    preset: Optional[str] = typer.Option(None, help="tiny (tests), cpu (32 px), gpu (64 px) (default: gpu when "
                                         "a CUDA GPU is present, else cpu)"),
    restart: bool = typer.Option(False, "--restart", help="start again from step 0 in a run directory that holds "
                                 "checkpoints (the old run is moved to OUT/previous-TIME/)"),
    epochs: Optional[int] = typer.Option(None, help=_presets("train", "epochs")),
    seed: Optional[int] = typer.Option(None, help="(default: 0)"),
    batch_size: Optional[int] = typer.Option(None, help="per process and micro-batch (" +
                                             _presets("train", "batch_size") + ")"),
    grad_accum: Optional[int] = typer.Option(None, help="micro-batches per optimizer step (default: 1)"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate (" + _presets("train", "lr") + ")"),
    warmup_steps: Optional[int] = typer.Option(None, help=_presets("train", "warmup_steps")),
    mixed_precision: Optional[str] = typer.Option(None, help="no, bf16 or fp16 (" +
                                                  _presets("train", "mixed_precision") + ")"),
    schedule: Optional[str] = typer.Option(None, help="cosine, linear or sigmoid (" +
                                           _presets("diffusion", "beta_schedule", schedule_name) + ")"),
    objective: Optional[str] = typer.Option(None, help=objective_help()),
    min_snr: Optional[float] = typer.Option(None, help="min-SNR-gamma loss weighting (default: 0 = off)"),
    cfg_dropout: Optional[float] = typer.Option(None, help="probability of the null prompt in training "
                                                "(default: 0.1)"),
    ema_decay: Optional[float] = typer.Option(None, help=_presets("train", "ema_decay")),
    flip_prob: Optional[float] = typer.Option(None, help="horizontal flips of side/text-free emoji (default: 0)"),
    image_size: Optional[int] = typer.Option(None, help="training resolution in px (default: the preset's: "
                                             "tiny 16, cpu 32, gpu 64)"),
    channels: Optional[str] = typer.Option(None, help="widths per level, e.g. 64,128,192,256 (default: the preset's)"),
    num_res_blocks: Optional[str] = typer.Option(None, help="ResNet blocks per level: one number, or one per "
                                                 "level, e.g. 1,2,2 (default: the preset's)"),
    pooled_text: Optional[bool] = typer.Option(None, "--pooled-text/--no-pooled-text",
                                               help="add the pooled caption to the time embedding (" +
                                               _presets("model", "pooled_text", _on_off) + ")"),
    patch: Optional[int] = typer.Option(None, help="pixel-unshuffle factor before the first level, 1 = off (" +
                                        _presets("model", "patch") + ")"),
    lr_schedule: Optional[str] = typer.Option(None, help="cosine (decay to the last epoch) or constant "
                                              "(after warm-up; extendable) (" + _presets("train", "lr_schedule") + ")"),
    subset: Optional[int] = typer.Option(None, help="train on this many base emoji only, for ablations "
                                         "(default: 0 = all)"),
    self_attn: Optional[str] = typer.Option(None, help="0/1 per level, e.g. 0,0,1,1 (default: the preset's)"),
    cross_attn: Optional[str] = typer.Option(None, help="0/1 per level, e.g. 0,1,1,1 (default: the preset's)"),
    text_encoder: Optional[str] = typer.Option(None, help="minilm (the offline default) or any HF text model id/path"),
    max_length: Optional[int] = typer.Option(None, help="caption tokens (default: 24)"),
    save_every: Optional[int] = typer.Option(None, help="epochs between checkpoints (" +
                                             _presets("train", "save_every") + ")"),
    sample_every: Optional[int] = typer.Option(None, help="epochs between validation grids, 0: never (" +
                                               _presets("train", "sample_every") + ")"),
    keep_checkpoints: Optional[int] = typer.Option(None, help="checkpoints kept (default: 3)"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the U-Net "
                                           "(default: off)"),
    cpu: bool = typer.Option(False, "--cpu", help="train on the CPU even if a GPU is present"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: torch's choice)"),
    max_steps: Optional[int] = typer.Option(None, hidden=True, help="stop (and save) after this many steps"),
    max_cpu_seconds: Optional[float] = typer.Option(None, hidden=True,
                                                    help="stop (and save) after this much CPU time in training steps"),
):
    """Train (or resume) the emoji U-Net. Several processes: torchrun --nproc_per_node N -m dfedit_train.cli
    emoji ..., or accelerate launch (also --cpu --num_processes N)."""
    opts = dict(locals())  # first: every option of this command by name, None where it was not given
    from dfedit.emoji import schema

    from .config import preset as get_preset
    from .config import resolve_configs
    from .rundir import RunLock, archive_run

    given, flags = given_options({k: v for k, v in opts.items() if k not in _NOT_CONFIG})
    schema.check_given(given, flags)  # every option, before any file is touched
    for name, v in (("--threads", threads), ("--max-steps", max_steps)):
        if v is not None and v < 1:
            raise DfeditError(f"{name} must be at least 1, got {v}")
    if max_cpu_seconds is not None and not (max_cpu_seconds > 0 and max_cpu_seconds != float("inf")):
        raise DfeditError(f"--max-cpu-seconds must be a finite number > 0, got {max_cpu_seconds}")
    import torch
    auto_preset = preset or ("gpu" if torch.cuda.is_available() and not cpu else "cpu")
    presets = get_preset(auto_preset)
    check_out_dir(out)
    relaunch_under_torchrun()  # after every check, so that an error is reported once, by this process

    if threads:
        import torch
        torch.set_num_threads(threads)  # on a shared CPU, fewer threads than cores avoids thrashing
    echo = functools.partial(typer.echo, err=True)
    # One trainer per run directory (with several processes, the first one holds it for all).
    first = is_rank0()
    lock = RunLock(out, log=echo) if first else None
    if lock is not None:
        lock.acquire()
    try:
        if restart and first:
            archive_run(out, log=echo)
        mc, dc, tc, dac, saved = resolve_configs(out, presets, given, log=echo if first else (lambda m: None),
                                                 preset_name=preset, fresh=restart, repair=first)
        _train_resolved(out, mc, dc, tc, dac, saved, given, flags, channels, self_attn, cross_attn,
                        auto_preset, quiet, max_steps, max_cpu_seconds, cpu, echo,
                        auto=preset is None)
    finally:
        if lock is not None:
            lock.release()


def _train_resolved(out, mc, dc, tc, dac, saved, given, flags, channels, self_attn, cross_attn, preset, quiet,
                    max_steps, max_cpu_seconds, cpu, echo, auto=False):
    """The rest of `emoji` once the run directory is locked and the configs resolved."""
    from dfedit.emoji import schema
    from .train import train

    say = echo if is_rank0() else (lambda m: None)  # several processes: rank 0 talks
    n_levels = len(mc.channels)
    if channels is not None and self_attn is None and len(mc.self_attn) != n_levels:  # keep flags in step
        mc.self_attn = tuple(mc.self_attn[-n_levels:]) if len(mc.self_attn) > n_levels else \
            (False,) * (n_levels - len(mc.self_attn)) + tuple(mc.self_attn)
    if channels is not None and cross_attn is None and len(mc.cross_attn) != n_levels:
        mc.cross_attn = tuple(mc.cross_attn[-n_levels:]) if len(mc.cross_attn) > n_levels else \
            (False,) * (n_levels - len(mc.cross_attn)) + tuple(mc.cross_attn)
    mc.validate()
    schema.check_options(mc, dc, tc, dac, lambda sec, f: flags.get(f"{sec}.{f}", f"the preset's {sec}.{f}"),
                         checked=given)
    import torch
    if not cpu and not torch.cuda.is_available() and tc.mixed_precision == "fp16":
        raise DfeditError("fp16 mixed precision needs a GPU; use --mixed-precision bf16 or no on the CPU")
    on_cpu = cpu or not torch.cuda.is_available()
    if (saved is None and on_cpu and tc.mixed_precision == "bf16" and "train.mixed_precision" not in given
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        # Without native bf16 (AVX512-BF16/AMX) autocast emulates it: measured ~10x slower than fp32.
        tc.mixed_precision = "no"
        say("note: this CPU has no native bf16, so the preset's bf16 autocast is replaced by fp32 "
            "(--mixed-precision bf16 forces it)")
    if saved is None and auto:
        say(f"note: --preset {preset} ({mc.image_size} px), as " +
            ("a CUDA GPU is present" if preset == "gpu" else "no CUDA GPU is present (--preset gpu is the 64 px recipe)"))
    if saved is None and preset == "gpu" and not torch.cuda.is_available():
        say("note: the gpu preset (64 px) is slow on a CPU; --preset cpu trains a 32 px model")
    if saved is not None:
        st = saved["state"]
        total = st["steps_per_epoch"] * tc.epochs
        done = st["epoch"]  # completed epochs; the bar counts the epoch in progress from 1
        say(f"resuming {out} from checkpoints/{Path(saved['_checkpoint_dir']).name} (step {st['step']} of {total}, "
            f"{done} of {tc.epochs} epochs done, continuing in epoch {min(done + 1, tc.epochs)})")
    res = train(out, mc, dc, tc, dac, saved=saved, progress=not quiet, max_steps=max_steps, cpu=cpu, log=echo,
                max_cpu_seconds=max_cpu_seconds)
    ips = res.get("images_per_s")
    if is_rank0():
        typer.echo(f"step {res['step']}" + (f", {ips:.1f} images/s" if ips else "") +
                   (f", {res['skipped']} skipped steps" if res["skipped"] else "") +
                   (f", {res['world_size']} processes" if res.get("world_size", 1) > 1 else "") +
                   f"; checkpoints in {out}")


@app.command("eval")
@one_line_errors
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint or run directory, or emoji (the built-in model)"),
    weights: str = typer.Option("ema", help="ema or model"),
    n_samples: int = typer.Option(16, help="samples for the memorisation check and the grid"),
    stride: int = typer.Option(20, help="DDPM stride for samples"),
    guidance: float = typer.Option(3.0, help="CFG scale of the samples"),
    seed: int = typer.Option(0),
    max_images: int = typer.Option(256, help="images per split for the loss bands"),
    out: Optional[Path] = typer.Option(None, help="default: CHECKPOINT/eval; for the built-in model the user cache "
                                       "($DFEDIT_CACHE/eval/builtin-emoji), never the installed package"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N or mps (default: cuda if available)"),
    quiet: bool = typer.Option(False, "--quiet"),
    recognise: bool = typer.Option(True, "--recognise/--no-recognise", help="also run the recognisability metric"),
):
    import math

    import torch

    from dfedit.files import writable_dir
    from dfedit.devices import pick_device
    from dfedit.plan import check_seed

    from dfedit.emoji import checkpoint as ckpt

    from .evaluate import _default_eval_dir, evaluate

    if weights not in ("ema", "model"):
        raise DfeditError(f"--weights must be ema or model, got {weights!r}")
    for name, v in (("--n-samples", n_samples), ("--max-images", max_images)):
        if v < 1:
            raise DfeditError(f"{name} must be at least 1, got {v}")
    if not math.isfinite(guidance):
        raise DfeditError(f"--guidance must be a finite number, got {guidance}")
    check_seed(seed)
    dev = pick_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ck, _ = ckpt.load(checkpoint)
    ckpt.describe(ck)[0].strided_timesteps(stride)  # --stride checked before anything loads
    out = Path(out) if out is not None else _default_eval_dir(ck)  # never into the installed package
    why = writable_dir(out)
    if why is not None:
        raise DfeditError(f"cannot write the evaluation to {out}: {why}; pass --out")
    if not quiet:
        typer.echo(f"evaluating {ck} into {out}", err=True)
    r = evaluate(ck, device=dev, weights=weights, n_samples=n_samples, stride=stride, guidance=guidance,
                 seed=seed, max_images=max_images, out=out, progress=not quiet)
    from rich.console import Console
    from rich.table import Table
    tab = Table(title=f"{r['checkpoint']} ({r['weights']}, step {r['step']})")
    tab.add_column("noise band (t)")
    tab.add_column("held-out eps-MSE")
    tab.add_column("train eps-MSE")
    for b in r["bands"]:
        tab.add_row(b, f"{r['val_loss'][b]:.4f}" if "val_loss" in r else "-", f"{r['train_loss'][b]:.4f}")
    con = Console(file=sys.stdout)
    con.print(tab)
    base = r["nn_rmse_heldout_real_median"]
    con.print(f"nearest-training-image RMSE: samples {r['nn_rmse_samples_median']:.4f} (median), held-out real "
              f"images {'-' if base is None else f'{base:.4f}'}; near copies: {r['near_copies']}/{len(r['samples'])}")
    con.print(f"grid: {r['grid']}")
    if recognise:
        _recognise(checkpoint, weights, 200, 200, stride, None, seed, out, dev, quiet)


def _recognise(checkpoint, weights, n_train, n_heldout, stride, guidance, seed, out, device, quiet,
               sampler=None, steps=None, n_diversity=50, n_seeds=8):
    from rich.console import Console
    from rich.table import Table

    from .evaluate import recognise as run
    from .recognise import JUDGE_VENDORS, LICENCE_NOTE

    r = run(checkpoint, device=device, weights=weights, n_train=n_train, n_heldout=n_heldout, stride=stride,
            guidance=guidance, seed=seed, out=out, progress=not quiet, log=lambda m: typer.echo(m, err=True),
            sampler=sampler, steps=steps, n_diversity=n_diversity, n_seeds=n_seeds)
    how = f"{r['steps']} steps" if r["steps"] else f"stride {r['stride']}"
    tab = Table(title=f"recognisability: {r['checkpoint']} ({r['weights']}, {r['images_seen'] or '?'} images seen; "
                      f"{r['sampler']} {how}, guidance {r['guidance']:g}, {r['resolution']} px)")
    for col in ("captions", "n", "top-1", "top-5", "real 1", "real 5", "ratio 1", "ratio 5", "recall", "copies"):
        tab.add_column(col)
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for split, row in r["rows"].items():
        tab.add_row(split, str(row["n"]), f(row["top1"]), f(row["top5"]), f(row["real_top1"]), f(row["real_top5"]),
                    f(row["ratio_top1"]), f(row["ratio_top5"]), f(row.get("recall_gu")), f(row.get("copy")))
    for name, c in r["ceiling"].items():
        tab.add_row(f"ceiling: {name}", str(c["n"]), "-", "-", f(c["top1"]), f(c["top5"]), "-", "-", "-", "-")
    # ten columns: wider than rich's 80 when the table goes to a file or a pipe
    con = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 150)
    con.print(tab)
    dv = r.get("diversity")
    if dv:
        cp = dv["copies"]
        con.print(f"diversity {f(dv['diversity'])} ({dv['n_prompts']} training captions x {dv['n_seeds']} seeds; "
                  f"spread of the recognised samples {f(dv['spread'])} RMSE / real drawings across "
                  f"{', '.join(r['ceiling'])} {f(dv['real_spread'])}; {f(dv['recognised'])} of the samples "
                  f"recognised); copy rate {f(cp['copy'])} (Gu 1/3 criterion {f(cp['gu'])}, under 2% RMSE "
                  f"{f(cp['near'])}, of {cp['n']} samples)", soft_wrap=True)
    real = (f"{r['style']}'s real drawings" if r.get("style") else
            f"the real {' and '.join(r['real_sets'])} drawings" + (" (mean over the sets)" if len(r["real_sets"]) > 1 else ""))
    con.print(f"judge: a classifier trained on {' and '.join(JUDGE_VENDORS)} emoji only. real k: its top-k on "
              f"{real} of the same emoji; ratio k = top-k of the samples / real k (the headline: "
              "ratio 5); ceiling: real k on all of a set's emoji; recall: Gu et al.'s criterion against the "
              "caption's own image (training captions only); copies: Gu's criterion against the nearest training "
              f"image, or under 2% RMSE from it. Sheet: {r['grid']}", soft_wrap=True)
    con.print(LICENCE_NOTE, soft_wrap=True)


@app.command("recognise")
@one_line_errors
def recognise_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint or run directory, or 'emoji' for the built-in model"),
    weights: str = typer.Option("ema", help="ema or model"),
    n_train: int = typer.Option(200, help="training-split captions (stratified by category)"),
    n_heldout: int = typer.Option(200, help="held-out captions (stratified; all of them if fewer)"),
    stride: int = typer.Option(30, help="DDPM stride for samples (30: dfedit sample's default, 34 steps)"),
    guidance: Optional[float] = typer.Option(None, help="default: the model's own"),
    sampler: str = typer.Option(DEFAULT_SAMPLER, help=f"any of dfedit's --sampler names ({', '.join(SAMPLER_NAMES)})"),
    steps: Optional[int] = typer.Option(None, help="model calls per sample instead of --stride"),
    diversity_captions: int = typer.Option(50, help="training captions sampled with several seeds for diversity"),
    seeds: int = typer.Option(8, help="seeds per diversity caption (0 or 1: no diversity)"),
    seed: int = typer.Option(0),
    prompts_of: Optional[Path] = typer.Option(None, help="judge on the prompts and splits of this model trained on "
                                              "several drawing sets (default: the model's own, when it has sets)"),
    pairs: int = typer.Option(100, help="with several sets: held-out (emoji, tone) and (emoji, set) pairs judged, each"),
    out: Optional[Path] = typer.Option(None, help="default: CHECKPOINT/eval (the cache for the built-in model)"),
    device: Optional[str] = typer.Option(None, help="default: cuda if available"),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Recognisability, diversity and copying: a classifier trained on Apple's and Facebook's drawings
    (never a training set) judges samples for a fixed, stratified caption set."""
    import torch

    from dfedit.samplers import get_sampler

    get_sampler(sampler)  # an unknown name is one sentence, before anything loads
    if steps is not None and steps < 1:
        raise DfeditError(f"--steps must be at least 1, got {steps}")

    if weights not in ("ema", "model"):
        raise DfeditError(f"--weights must be ema or model, got {weights!r}")
    for name, v in (("--n-train", n_train), ("--n-heldout", n_heldout), ("--diversity-captions", diversity_captions),
                    ("--seeds", seeds)):
        if v < 0:
            raise DfeditError(f"{name} must be 0 or more, got {v}")
    if stride < 1 or stride > 1000:
        raise DfeditError(f"--stride must be between 1 and 1000, got {stride}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from dfedit.emoji import checkpoint as ckpt
    if prompts_of is not None or ckpt.load(checkpoint)[1]["data"].get("sets"):
        return _generalise(checkpoint, weights, prompts_of, n_train, pairs, n_heldout, diversity_captions, seeds,
                           stride, guidance, seed, out, dev, quiet, sampler, steps)
    _recognise(checkpoint, weights, n_train, n_heldout, stride, guidance, seed, out, dev, quiet, sampler, steps,
               diversity_captions, seeds)


def _generalise(checkpoint, weights, prompts_of, n_train, pairs, n_unseen, n_diversity, n_seeds, stride, guidance,
                seed, out, device, quiet, sampler, steps):
    """`recognise` for a model trained on several drawing sets (or on their prompts): generalise.py's table."""
    from .evaluate import generalisation
    from .generalise import table
    from .recognise import JUDGE_VENDORS, LICENCE_NOTE

    r = generalisation(checkpoint, device=device, weights=weights, prompts_of=prompts_of, n_train=n_train,
                       n_pairs=pairs, n_unseen=n_unseen, n_diversity=n_diversity, n_seeds=n_seeds, stride=stride,
                       guidance=guidance, seed=seed, out=out, progress=not quiet,
                       log=lambda m: typer.echo(m, err=True), sampler=sampler, steps=steps)
    how = f"{r['steps']} steps" if r["steps"] else f"stride {r['stride']}"
    typer.echo(f"generalisation: {r['checkpoint']} ({weights}, {r['images_seen'] or '?'} images seen; {r['sampler']} "
               f"{how}, guidance {r['guidance']:g}, {r['resolution']} px) on the prompts of {r['prompts_of']}")
    typer.echo(table(r))
    typer.echo(f"judge: a classifier trained on {' and '.join(JUDGE_VENDORS)} emoji only; real: its top-k on the real "
               "drawing of the style asked for (no style: the mean over the sets); ratio = top-5 of the samples / "
               "real; rank: median rank of the right emoji. Sheet: " + r["grid"])
    typer.echo(LICENCE_NOTE)


@app.command()
@one_line_errors
def export(
    run: Path = typer.Argument(..., help="run or checkpoint directory"),
    dest: Path = typer.Argument(..., help="output directory (config.json, ema.safetensors, record.json)"),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="store the EMA weights in half precision"),
    device: str = typer.Option("", help="what it was trained on, for the record (e.g. '2-core CPU')"),
    guidance: Optional[float] = typer.Option(None, help="the model's default guidance scale (dfedit's --cfg when "
                                                        "none is given); default: the run's validation-grid scale"),
):
    """Export a run's EMA weights as a small inference-only model directory (dfedit --model DEST)."""
    import math

    from .export import check_export_dest
    from .export import export as export_run

    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise DfeditError(f"--guidance must be a finite number >= 0, got {guidance}")
    check_export_dest(dest)  # before reading any weights
    d = export_run(run, dest, fp16=fp16, extra_record={"device": device} if device else None, guidance=guidance)
    size = sum(f.stat().st_size for f in d.iterdir()) / 2**20
    typer.echo(f"wrote {d} ({size:.1f} MiB)", err=True)


@app.command()
@one_line_errors
def data(
    data: Optional[str] = typer.Option(None, help="as for `emoji --data`"),
    vendor: str = typer.Option("google"),
    base_only: bool = typer.Option(False, "--base-only"),
    val_fraction: float = typer.Option(0.1),
):
    """Build (or read) the cached dataset and print its counts."""
    from . import data as datamod

    d = datamod.load(data or "npm", vendor, base_only, val_fraction)
    if vendor in datamod.LICENCE_WARNINGS:
        typer.echo(f"warning: {datamod.LICENCE_WARNINGS[vendor]}", err=True)
    typer.echo(f"{d.source}: {len(d)} images, {int((~d.val).sum())} train / {int(d.val.sum())} val, "
               f"{len(set(d.groups))} base emoji, {len(set(d.captions))} distinct captions")


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
