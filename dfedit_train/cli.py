"""`dfedit-train`: emoji (train / resume), eval, data. Bad input -> one line on stderr, exit 1."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from dfedit.cli import OneLineErrors, error_handler
from dfedit.errors import DfeditError


class _OneLineErrors(OneLineErrors):
    prefix = "dfedit-train"


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train a text-conditional emoji U-Net that dfedit can sample and edit with.")


one_line_errors = error_handler("dfedit-train", "lower --batch-size (with --grad-accum to keep the batch)")


def _ints(s: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise DfeditError(f"{what} must be comma-separated integers, got {s!r}") from None


def _bools(s: str, what: str) -> tuple[bool, ...]:
    vals = _ints(s, what)
    if any(v not in (0, 1) for v in vals):
        raise DfeditError(f"{what} must be comma-separated 0/1 flags, got {s!r}")
    return tuple(bool(v) for v in vals)


@app.command()
@one_line_errors
def emoji(
    data: Optional[str] = typer.Option(None, help="npm tarball/package dir, Kaggle emojiimage-dataset dir, or a "
                                       "folder of PNGs + captions CSV (default: fetch the npm package)"),
    vendor: Optional[str] = typer.Option(None, help="google (default), twitter, apple, facebook"),
    base_only: Optional[bool] = typer.Option(None, "--base-only", help="drop skin-tone variants"),
    out: Path = typer.Option(Path("runs/emoji"), help="run directory; rerun on it to resume"),
    preset: str = typer.Option("gpu", help="tiny (tests), cpu (32 px), gpu (64 px)"),
    epochs: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None, help="per process and micro-batch"),
    grad_accum: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    warmup_steps: Optional[int] = typer.Option(None),
    mixed_precision: Optional[str] = typer.Option(None, help="no, bf16 or fp16"),
    schedule: Optional[str] = typer.Option(None, help="cosine (default), linear, sigmoid"),
    objective: Optional[str] = typer.Option(None, help="eps (default), v, x0, or flow (flow matching: "
                                            "velocity target, its own noise schedule)"),
    min_snr: Optional[float] = typer.Option(None, help="min-SNR-gamma loss weighting (0 = off)"),
    cfg_dropout: Optional[float] = typer.Option(None, help="probability of the null prompt in training"),
    ema_decay: Optional[float] = typer.Option(None),
    flip_prob: Optional[float] = typer.Option(None, help="horizontal flips of side/text-free emoji"),
    image_size: Optional[int] = typer.Option(None),
    channels: Optional[str] = typer.Option(None, help="widths per level, e.g. 64,128,192,256"),
    num_res_blocks: Optional[int] = typer.Option(None),
    self_attn: Optional[str] = typer.Option(None, help="0/1 per level, e.g. 0,0,1,1"),
    cross_attn: Optional[str] = typer.Option(None, help="0/1 per level, e.g. 0,1,1,1"),
    text_encoder: Optional[str] = typer.Option(None, help="minilm (offline default) or any HF text model id/path"),
    max_length: Optional[int] = typer.Option(None, help="caption tokens"),
    save_every: Optional[int] = typer.Option(None, help="epochs between checkpoints"),
    sample_every: Optional[int] = typer.Option(None, help="epochs between validation grids (0: never)"),
    keep_checkpoints: Optional[int] = typer.Option(None),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the U-Net"),
    cpu: bool = typer.Option(False, "--cpu", help="train on the CPU even if a GPU is present"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: torch's choice)"),
    max_steps: Optional[int] = typer.Option(None, hidden=True, help="stop (and save) after this many steps"),
):
    """Train (or resume) the emoji U-Net."""
    from .config import OBJECTIVE_ALIASES, SCHEDULE_ALIASES
    from .config import preset as get_preset
    from .train import resolve_configs, train

    given = {}

    def put(key, value):
        if value is not None:
            given[key] = value

    put("data.source", data)
    put("data.vendor", vendor)
    put("data.base_only", base_only)
    put("data.text_encoder", text_encoder)
    put("data.max_length", max_length)
    for f, v in dict(epochs=epochs, seed=seed, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                     warmup_steps=warmup_steps, mixed_precision=mixed_precision, ema_decay=ema_decay,
                     flip_prob=flip_prob, save_every=save_every, sample_every=sample_every,
                     keep_checkpoints=keep_checkpoints, compile=compile).items():
        put(f"train.{f}", v)
    if schedule is not None:
        if schedule not in SCHEDULE_ALIASES:
            raise DfeditError(f"--schedule must be cosine, linear or sigmoid, got {schedule!r}")
        put("diffusion.beta_schedule", SCHEDULE_ALIASES[schedule])
    if objective is not None:
        if objective not in OBJECTIVE_ALIASES:
            raise DfeditError(f"--objective must be eps, v, x0 or flow, got {objective!r}")
        put("diffusion.prediction_type", OBJECTIVE_ALIASES[objective])
        if OBJECTIVE_ALIASES[objective] == "flow_prediction":
            if schedule is not None:
                raise DfeditError("--objective flow has its own noise schedule (flow times): drop --schedule")
            put("diffusion.beta_schedule", "flow")
    put("diffusion.min_snr_gamma", min_snr)
    put("diffusion.cfg_dropout", cfg_dropout)
    put("model.image_size", image_size)
    put("model.num_res_blocks", num_res_blocks)
    if channels is not None:
        put("model.channels", _ints(channels, "--channels"))
    if self_attn is not None:
        put("model.self_attn", _bools(self_attn, "--self-attn"))
    if cross_attn is not None:
        put("model.cross_attn", _bools(cross_attn, "--cross-attn"))
    if mixed_precision is not None and mixed_precision not in ("no", "bf16", "fp16"):
        raise DfeditError(f"--mixed-precision must be no, bf16 or fp16, got {mixed_precision!r}")
    for name, v in (("--epochs", epochs), ("--batch-size", batch_size), ("--grad-accum", grad_accum)):
        if v is not None and v < 1:
            raise DfeditError(f"{name} must be at least 1, got {v}")

    if threads:
        import torch
        torch.set_num_threads(threads)  # on a shared CPU, fewer threads than cores avoids thrashing
    mc, dc, tc, dac, saved = resolve_configs(out, get_preset(preset), given)
    n_levels = len(mc.channels)
    if channels is not None and self_attn is None and len(mc.self_attn) != n_levels:  # keep flags in step
        mc.self_attn = tuple(mc.self_attn[-n_levels:]) if len(mc.self_attn) > n_levels else \
            (False,) * (n_levels - len(mc.self_attn)) + tuple(mc.self_attn)
    if channels is not None and cross_attn is None and len(mc.cross_attn) != n_levels:
        mc.cross_attn = tuple(mc.cross_attn[-n_levels:]) if len(mc.cross_attn) > n_levels else \
            (False,) * (n_levels - len(mc.cross_attn)) + tuple(mc.cross_attn)
    mc.validate()
    import torch
    if not cpu and not torch.cuda.is_available() and tc.mixed_precision == "fp16":
        raise DfeditError("fp16 mixed precision needs a GPU; use --mixed-precision bf16 or no on the CPU")
    if saved is None and preset == "gpu" and not torch.cuda.is_available():
        typer.echo("note: the gpu preset (64 px) is slow on a CPU; --preset cpu trains a 32 px model", err=True)
    if saved is not None:
        typer.echo(f"resuming {out} at step {saved['state']['step']} (epoch {saved['state']['epoch']})", err=True)
    res = train(out, mc, dc, tc, dac, saved=saved, progress=not quiet, max_steps=max_steps, cpu=cpu,
                log=lambda m: typer.echo(m, err=True))
    ips = res.get("images_per_s")
    typer.echo(f"step {res['step']}" + (f", {ips:.1f} images/s" if ips else "") +
               (f", {res['skipped']} skipped steps" if res["skipped"] else "") + f"; checkpoints in {out}")


@app.command("eval")
@one_line_errors
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint or run directory"),
    weights: str = typer.Option("ema", help="ema or model"),
    n_samples: int = typer.Option(16),
    stride: int = typer.Option(20, help="DDPM stride for samples"),
    guidance: float = typer.Option(3.0),
    seed: int = typer.Option(0),
    max_images: int = typer.Option(256, help="images per split for the loss bands"),
    out: Optional[Path] = typer.Option(None, help="default: CHECKPOINT/eval"),
    device: Optional[str] = typer.Option(None, help="default: cuda if available"),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Held-out loss per noise band, nearest-neighbour memorisation check, sample grid."""
    import torch

    from .evaluate import evaluate

    if weights not in ("ema", "model"):
        raise DfeditError(f"--weights must be ema or model, got {weights!r}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    r = evaluate(checkpoint, device=dev, weights=weights, n_samples=n_samples, stride=stride, guidance=guidance,
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


@app.command()
@one_line_errors
def export(
    run: Path = typer.Argument(..., help="run or checkpoint directory"),
    dest: Path = typer.Argument(..., help="output directory (config.json, ema.safetensors, record.json)"),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="store the EMA weights in half precision"),
    device: str = typer.Option("", help="what it was trained on, for the record (e.g. '2-core CPU')"),
):
    """Export a run's EMA weights as a small inference-only model directory (dfedit --model DEST)."""
    from .checkpoint import export as export_run

    d = export_run(run, dest, fp16=fp16, extra_record={"device": device} if device else None)
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
