"""The training loop: accelerate for devices/precision, everything else explicit.

Determinism and resume: every random draw of optimizer step s (batch order, timesteps, noise, CFG
dropout, flips, nn.Dropout) comes from generators seeded by (seed, epoch) or (seed, step, rank), not
from a stream that runs through the whole run. The training RNG state at step s is therefore a
function of s, so a checkpoint that stores step, weights, EMA and AdamW moments (the learning rate
is a function of s too) resumes to exactly the run that was never interrupted; tests check it
bit-for-bit on CPU.

The dataset (as float32 at training resolution) and the caption embeddings sit on the training
device: 3.5k emoji are ~170 MB at 64 px, far cheaper than a DataLoader feeding a GPU per step.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from dfedit.emoji import checkpoint as eck
from dfedit.emoji.text import TextEncoder
from dfedit.emoji.unet import UNet
from dfedit.errors import DfeditError
from dfedit.progress import progress_bar

from . import checkpoint as ckpt
from . import data as datamod
from . import rundir
from .config import DataConfig, DiffusionConfig, ModelConfig, TrainConfig, data_config, from_dict
from .diffusion import Diffusion, Objective
from .sample import EmojiDenoiser, sample, save_grid, to_uint8
from .signals import StopRequest

# Options that may change when a run is resumed; anything else must match the checkpoint.
RESUMABLE = {"epochs", "save_every", "sample_every", "keep_checkpoints", "compile", "grid_prompts"}


def mix(*xs: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so nearby (seed, step) pairs are unrelated."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def lr_at(step: int, total: int, tc: TrainConfig) -> float:
    """Linear warmup to tc.lr, then constant, or cosine decay to tc.min_lr at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total - tc.warmup_steps))
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * progress))


def resolve_configs(out: Path, preset_cfgs: tuple, given: dict, log=None, preset_name: str | None = None,
                    fresh: bool = False, repair: bool = True
                    ) -> tuple[ModelConfig, DiffusionConfig, TrainConfig, DataConfig, dict | None]:
    """Configs for this invocation: the checkpoint's when resuming (plus allowed changes), else preset+given.

    `given` maps "section.field" to values the user typed explicitly. The checkpoint resumed from
    is the newest complete, finite one (checkpoint.find_resumable, which logs why when it is not
    the one latest.json names); its directory is in saved["_checkpoint_dir"]. `preset_name`: the
    --preset typed explicitly, which must then describe the same model as the run's. `fresh`:
    start from step 0 (--restart); `repair`: let the finder repair the run directory (only the
    process that holds its lock does).
    """
    found = None
    if out.is_dir() and not fresh:
        found = ckpt.find_resumable(out, repair=repair, **({"log": log} if log else {}))
    if found is None:
        mc, dc, tc = (copy.deepcopy(c) for c in preset_cfgs)
        dac = DataConfig()
        sections = {"model": mc, "diffusion": dc, "train": tc, "data": dac}
        for key, v in given.items():
            sec, f = key.split(".")
            sections[sec] = replace(sections[sec], **{f: v})
        mc, dc, tc, dac = sections["model"], sections["diffusion"], sections["train"], sections["data"]
        return mc, dc, tc, dac, None
    saved = {**found.config, "_checkpoint_dir": str(found.path)}
    mc, dc = from_dict(ModelConfig, saved["model"]), from_dict(DiffusionConfig, saved["diffusion"])
    tc = from_dict(TrainConfig, saved["train"])
    dac = data_config(saved["data"])
    sections = {"model": mc, "diffusion": dc, "train": tc, "data": dac}
    for key, v in given.items():
        sec, f = key.split(".")
        old = getattr(sections[sec], f)
        if f in RESUMABLE:
            sections[sec] = replace(sections[sec], **{f: v})
        elif (tuple(old) if isinstance(old, (list, tuple)) else old) != (tuple(v) if isinstance(v, (list, tuple)) else v):
            raise DfeditError(f"{out} holds a run with {f}={old!r}; resume it without --{f.replace('_', '-')} "
                              f"or train into a new --out")
    if preset_name is not None:
        _check_preset(out, preset_name, preset_cfgs, sections, given)
    tc = sections["train"]
    if tc.epochs < saved["state"]["epoch"]:
        raise DfeditError(f"{out} is already at epoch {saved['state']['epoch']}; --epochs {tc.epochs} is smaller")
    return mc, dc, tc, dac, saved


def _check_preset(out: Path, name: str, preset_cfgs: tuple, sections: dict, given: dict) -> None:
    """Resuming with an explicit --preset: it must describe the run's model and diffusion (the
    fields the user did not set explicitly), as any other run-defining option must match."""
    from dataclasses import fields

    for sec, preset_obj in (("model", preset_cfgs[0]), ("diffusion", preset_cfgs[1])):
        for f in fields(preset_obj):
            if f.name == "text_dim" or f"{sec}.{f.name}" in given:
                continue
            want, have = getattr(preset_obj, f.name), getattr(sections[sec], f.name)
            norm = (lambda v: tuple(v) if isinstance(v, (list, tuple)) else v)
            if norm(want) != norm(have):
                raise DfeditError(f"{out} holds a run with {f.name}={have!r}, --preset {name} has {want!r}; resume "
                                  f"it without --preset (or with the preset it was started with), or train into "
                                  f"a new --out")


def prepare_data(dac: DataConfig, size: int, device, progress: bool, styles: tuple[str, ...] = ()):
    """Train/val tensors on the device at training resolution, caption embeddings, stats."""
    if dac.sets:
        return _prepare_sets(dac, size, device, styles)
    d = datamod.load(dac.source, dac.vendor, dac.base_only, dac.val_fraction)
    if dac.vendor in datamod.LICENCE_WARNINGS:
        import sys
        print(f"warning: {datamod.LICENCE_WARNINGS[dac.vendor]}", file=sys.stderr)
    if dac.subset:
        d = d.subset(datamod.subset_mask(d, dac.subset))
    train = d.subset(~d.val)
    if len(train) == 0:
        raise DfeditError("the training split is empty: add images or lower --val-fraction")
    enc = TextEncoder(dac.text_encoder, dac.max_length, device="cpu")
    states, mask = enc.embed(d.captions)
    tr, va = np.flatnonzero(~d.val), np.flatnonzero(d.val)
    return _on_device(d.images, d.captions, tr, va, (states[tr], mask[tr]), (states[va], mask[va]), d.source, enc,
                      size, device)


def _on_device(images, captions, tr, va, train_text, val_text, source: str, enc, size: int, device) -> dict:
    """What every run trains from: the rows `tr` and `va` of (images, captions) at training
    resolution on the device, their caption states and masks (`train_text`, `val_text`: (states,
    mask) aligned with tr and va), which rows a flip leaves correct, and the channel statistics."""
    def to_device(idx):
        return datamod.images_to_tensor(images[idx], size).contiguous().to(device)

    x_train = to_device(tr)
    return {
        "x": x_train, "text": train_text[0].to(device), "mask": train_text[1].to(device),
        "flip_ok": torch.from_numpy(datamod.flippable([captions[i] for i in tr])).to(device),
        "captions": [captions[i] for i in tr],
        "val_x": to_device(va), "val_text": val_text[0].to(device), "val_mask": val_text[1].to(device),
        "val_captions": [captions[i] for i in va],
        "mean": x_train.mean(dim=(0, 2, 3)).tolist(), "std": x_train.std(dim=(0, 2, 3)).tolist(),
        "source": source, "text_identity": enc.identity, "text_dim": int(train_text[0].shape[-1]),
    }


def _prepare_sets(dac: DataConfig, size: int, device, styles: tuple[str, ...]):
    """prepare_data for several drawing sets (dfedit_train/sets.py): as above, plus every caption
    variant embedded once ("vtext"; "vidx"/"vcount" say which rows each training row may draw), the
    style index of each row (1-based into `styles`; absent when the model has no styles) and the
    sampling weight of each row (tone variants share their base's weight)."""
    from . import sets as setsmod

    ms = setsmod.load_sets(tuple(dac.sets), dac.base_only)
    split = setsmod.run_split(ms, dac)
    tr = [i for i, s in enumerate(split) if not s]
    va = [i for i, s in enumerate(split) if s and s != "excluded"]
    if not tr:
        raise DfeditError("the training split is empty: add images or lower --val-fraction")
    rows = tr + va
    per_row = [ms.variants[i] if dac.caption_variants else [ms.captions[i]] for i in rows]
    unique = sorted({v for vs in per_row for v in vs})
    where = {v: j for j, v in enumerate(unique)}
    enc = TextEncoder(dac.text_encoder, dac.max_length, device="cpu")
    states, mask = enc.embed(unique)  # fp16: the step draws a few rows and casts them
    K = max(len(vs) for vs in per_row)
    vidx = torch.tensor([[where[v] for v in vs] + [where[vs[0]]] * (K - len(vs)) for vs in per_row])
    vcount = torch.tensor([len(vs) for vs in per_row])
    prim, ntr = vidx[:, 0], len(tr)  # each row's CLDR name: the validation grid's caption
    D = _on_device(ms.images, ms.captions, tr, va, (states[prim[:ntr]].float(), mask[prim[:ntr]]),
                   (states[prim[ntr:]].float(), mask[prim[ntr:]]), ms.source, enc, size, device)
    D["weights"] = torch.from_numpy(setsmod.row_weights(ms, tr, dac.tone_share)).double()
    if dac.caption_variants:
        D.update(vtext=states.to(device), vmask=mask.to(device), vidx=vidx[:ntr].to(device),
                 vcount=vcount[:ntr].to(device), name_share=dac.caption_name_share)
    if styles:
        unknown = sorted({ms.styles[i] for i in rows} - set(styles))
        if unknown:
            raise DfeditError(f"the model's styles ({', '.join(styles)}) do not name the drawing sets {', '.join(unknown)}")
        D["style"] = torch.tensor([styles.index(ms.styles[i]) + 1 for i in tr], device=device)
    return D


def epoch_order(D: dict, n: int, seed: int, epoch: int, device) -> torch.Tensor:
    """The rows of one epoch: a permutation, or n weighted draws when rows carry sampling weights."""
    g = torch.Generator().manual_seed(mix(seed, 1, epoch))
    if "weights" in D:
        return torch.multinomial(D["weights"], n, replacement=True, generator=g).to(device)
    return torch.randperm(n, generator=g).to(device)


def draw_batch(D: dict, idx: torch.Tensor, g: torch.Generator, objective: Objective, cfg_dropout: float,
               flip_prob: float):
    """One training batch from the device-resident data: indexing and on-device draws only, no host
    work, so feeding the GPU never waits on a loader (benchmarks/bench_train.py times this).
    Draw order, all from g: the objective's timesteps, noise, CFG dropout, flips."""
    b, device = idx.shape[0], idx.device
    S = D["x"].shape[-1]
    t = objective.sample_t(b, g, device)
    noise = torch.randn((b, 3, S, S), generator=g, device=device)
    drop = torch.rand((b,), generator=g, device=device) < cfg_dropout
    flip = (torch.rand((b,), generator=g, device=device) < flip_prob) & D["flip_ok"][idx]
    x0 = torch.where(flip[:, None, None, None], D["x"][idx].flip(-1), D["x"][idx])
    mask = D["mask"][idx] & ~drop[:, None]  # an empty mask is the null prompt
    return x0, t, noise, D["text"][idx], mask


def draw_conditioning(D: dict, idx: torch.Tensor, g: torch.Generator, text, mask, style_dropout: float):
    """The caption variant and drawing-set index of each sample, for data that has them; drawn from
    g after draw_batch's draws, so runs without them keep their random stream. Which variant: the
    CLDR name with probability name_share, else one of the others uniformly. The null prompt (CFG
    dropout, an empty mask) stays null. Style index 0 ("any style") with probability style_dropout."""
    b, device = idx.shape[0], idx.device
    style = None
    if "vidx" in D:
        u = torch.rand((b,), generator=g, device=device)
        r = torch.rand((b,), generator=g, device=device)
        cnt = D["vcount"][idx]
        alt = 1 + torch.minimum((r * (cnt - 1).clamp(min=1)).long(), (cnt - 2).clamp(min=0))
        col = torch.where((u < D["name_share"]) | (cnt < 2), torch.zeros_like(alt), alt)
        vi = D["vidx"][idx, col]
        keep = mask.any(dim=1)  # not dropped to the null prompt
        text = D["vtext"][vi].to(text.dtype)
        mask = D["vmask"][vi] & keep[:, None]
    if "style" in D:
        drop = torch.rand((b,), generator=g, device=device) < style_dropout
        style = torch.where(drop, torch.zeros_like(D["style"][idx]), D["style"][idx])
    return text, mask, style


def grid_indices(n_train: int, n_val: int, k: int, seed: int) -> tuple[list[int], list[int]]:
    """Fixed validation-grid prompts: half from train, half held out, chosen once by the seed."""
    g = torch.Generator().manual_seed(mix(seed, 7))
    kv = min(n_val, k // 2)
    kt = min(n_train, k - kv)
    return torch.randperm(n_train, generator=g)[:kt].tolist(), torch.randperm(max(n_val, 1), generator=g)[:kv].tolist()


class Stopped(DfeditError):
    """The run stopped on SIGINT/SIGTERM after saving; exit_code is 130 / 143."""

    def __init__(self, msg: str, exit_code: int):
        super().__init__(msg)
        self.exit_code = exit_code


def train_step(acc, net, fwd, opt, diff: Diffusion, D: dict, micro: list[torch.Tensor], lr: float, step: int,
               rank: int, dc: DiffusionConfig, tc: TrainConfig) -> tuple[float, float, bool]:
    """One optimizer step, and nothing of the loop's bookkeeping (logging, EMA, checkpoints, signals).

    Every random draw comes from generators seeded by (seed, step, rank) (module docstring): the
    batch draws from `g`, nn.Dropout from the global seed. `micro`: the index tensors of this
    process's micro-batches (gradient accumulation). Each is drawn (draw_batch), noised and scored
    by the run's objective (diff.loss); the gradient is clipped, and AdamW steps unless the loss or
    the gradient is non-finite (with fp16 the grad scaler decides). Returns (loss, gradient norm,
    whether the step was finite), the loss averaged over every process.
    """
    g = torch.Generator(acc.device).manual_seed(mix(tc.seed, 2, step, rank))
    torch.manual_seed(mix(tc.seed, 3, step, rank))  # nn.Dropout, if configured
    for group in opt.param_groups:
        group["lr"] = lr
    n = len(micro)
    total = torch.zeros((), device=acc.device)
    for j, idx in enumerate(micro):
        x0, t, noise, text, mask = draw_batch(D, idx, g, diff.objective, dc.cfg_dropout, tc.flip_prob)
        text, mask, style = draw_conditioning(D, idx, g, text, mask, dc.style_dropout)
        sync = acc.no_sync(net) if j < n - 1 else contextlib.nullcontext()
        with sync, acc.autocast():
            loss = diff.loss(fwd, x0, t, noise, text, mask, style=style).mean() / n
        acc.backward(loss)
        total += loss.detach()
    gnorm = acc.clip_grad_norm_(net.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
    if acc.num_processes > 1:  # the loss of the whole step, so every rank logs and skips alike
        total = acc.reduce(total, reduction="mean")
    loss_v, gnorm_v = float(total), float(gnorm)  # one host sync per step
    ok = math.isfinite(loss_v) and math.isfinite(gnorm_v)
    if ok or acc.scaler is not None:  # fp16: the grad scaler skips overflowed steps itself
        opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_v, gnorm_v, ok


def _ema_update(ema_params: list, net_params: list, ema_decay: float, step: int) -> None:
    """EMA of the weights after optimizer step `step`, with the usual warm-up of the decay."""
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, net_params, 1 - decay)


MAX_BAD_STEPS = 50  # non-finite steps in a row before a run stops (fp16's scaler needs ~16 at most)


def train(out: Path, mc: ModelConfig, dc: DiffusionConfig, tc: TrainConfig, dac: DataConfig,
          saved: dict | None = None, progress: bool = True, max_steps: int | None = None,
          cpu: bool = False, log=print, max_cpu_seconds: float | None = None,
          max_bad_steps: int = MAX_BAD_STEPS) -> dict:
    """Train (or resume) into `out`. `max_steps` stops early (after saving) for tests and smoke runs;
    `max_cpu_seconds` stops after that much process CPU time in training steps (equal-compute ablations).

    SIGINT / SIGTERM stop the run at the next step boundary with a checkpoint (`Stopped`, exit
    130 / 143); `max_bad_steps` non-finite steps in a row stop it without saving (DfeditError).
    """
    import os

    from accelerate import Accelerator

    # Several processes without CUDA (torchrun, accelerate launch): accelerate forms a gloo group
    # only when told it is on the CPU; otherwise every rank would train alone and write the run.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        cpu = True
    acc = Accelerator(mixed_precision=tc.mixed_precision, cpu=cpu, gradient_accumulation_steps=1)
    out.mkdir(parents=True, exist_ok=True)
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    if acc.is_main_process:
        rundir.clean_temps(out, log)
    with acc.main_process_first():  # rank 0 fetches/caches data and captions; the others then read them
        D = prepare_data(dac, mc.image_size, device, progress, styles=tuple(mc.styles))
    mc = replace(mc, text_dim=D["text_dim"])
    n = D["x"].shape[0]
    per_step = tc.batch_size * tc.grad_accum * world  # images per optimizer step, all processes
    if n < tc.batch_size * world:
        raise DfeditError(f"only {n} training images for a batch of {tc.batch_size} x {world} processes: "
                          f"lower --batch-size")
    steps_per_epoch = max(1, n // per_step)
    total_steps = steps_per_epoch * tc.epochs
    diff = Diffusion(dc, D["mean"], D["std"], device)

    torch.manual_seed(tc.seed)  # model init only; the loop re-seeds per step
    net = UNet(mc).to(device)
    if saved is None and tc.init_from:
        warm_start(net, tc.init_from, log if acc.is_main_process else (lambda *_: None))
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    opt = torch.optim.AdamW(ckpt.param_groups(net, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas))
    step, skipped, scaler_state, cpu_before = 0, 0, None, 0.0
    ck = None
    if saved is not None:
        ck = Path(saved["_checkpoint_dir"]) if "_checkpoint_dir" in saved else eck.resolve(out)
        _load_state(ck, saved, net, ema, opt)
        st = saved["state"]
        step, skipped, scaler_state = st["step"], st["skipped_steps"], st.get("scaler")
        cpu_before = st.get("train_cpu_seconds", 0.0)
        if st["steps_per_epoch"] != steps_per_epoch:
            raise DfeditError(f"{out} was trained with {st['steps_per_epoch']} steps per epoch, this setup "
                              f"gives {steps_per_epoch} (different data or number of processes)")
    net, opt = acc.prepare(net, opt)
    if scaler_state and acc.scaler is not None:
        acc.scaler.load_state_dict(scaler_state)
    raw = acc.unwrap_model(net)
    fwd = torch.compile(net) if tc.compile else net

    def config_dict(epoch: int) -> dict:
        return {
            "model": asdict(mc), "diffusion": asdict(dc), "schedule": dc.scheduler_config(), "train": asdict(tc),
            "data": {**asdict(dac), "mean": D["mean"], "std": D["std"], "source_desc": D["source"],
                     "n_train": n, "n_val": int(D["val_x"].shape[0]), "image_size": mc.image_size},
            "text_encoder": {"name": dac.text_encoder, "identity": D["text_identity"],
                             "max_length": dac.max_length, "dim": D["text_dim"]},
            "state": {"step": step, "epoch": epoch, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                      "images_seen": step * per_step, "skipped_steps": skipped, "world_size": world,
                      # process CPU time in training steps over every session of the run (compute budgets)
                      "train_cpu_seconds": round(cpu_before + cpu_train, 1),
                      "scaler": acc.scaler.state_dict() if acc.scaler is not None else None},
            "versions": {"torch": torch.__version__},
        }

    # The last checkpoint known to load and train cleanly: rotation never deletes it.
    health = {"protect": ck, "last_saved": step if saved is not None else None, "clean_steps": 0}

    def save(epoch: int) -> None:
        if world > 1:  # what rank 0 writes must be every rank's state: DDP keeps them in step
            sums = torch.stack([sum(p.detach().double().sum() for p in raw.parameters()),
                                sum(p.detach().double().sum() for p in ema.parameters())])
            every = acc.gather(sums.to(device)).view(world, 2).cpu()
            if not torch.allclose(every, every[:1].expand_as(every), rtol=1e-9, atol=0, equal_nan=True):
                raise DfeditError(f"the {world} processes hold different weights at step {step}: "
                                  "gradients were not synchronised")
        if acc.is_main_process:
            bad = _non_finite(raw, ema)
            if bad:
                raise DfeditError(f"the weights became non-finite at step {step} ({bad}); not saving them: the last "
                                  f"good checkpoint is {_name(health['protect'])}; lower --lr and resume")
            path = ckpt.save(out, step, config_dict(epoch), raw.state_dict(), ema.state_dict(),
                             opt.optimizer.state_dict() if hasattr(opt, "optimizer") else opt.state_dict(),
                             tc.keep_checkpoints, protect=health["protect"])
            if health["clean_steps"] > 0 or health["protect"] is None:
                health["protect"] = path
            health["clean_steps"] = 0
        health["last_saved"] = step
        acc.wait_for_everyone()

    gt, gv = grid_indices(n, D["val_x"].shape[0], tc.grid_prompts, tc.seed)

    def validation_grid(epoch: int) -> None:
        if not acc.is_main_process:
            return
        from dfedit.denoiser import Cond

        prompts = [D["captions"][i] for i in gt] + [D["val_captions"][i] for i in gv]
        cond = Cond(text=torch.cat([D["text"][gt], D["val_text"][gv]]).float(),
                    text_mask=torch.cat([D["mask"][gt], D["val_mask"][gv]]))
        den = EmojiDenoiser(copy.deepcopy(ema), diff, _NullOnly(mc.text_dim, dac.max_length, device),
                            mc.image_size, str(out), device, torch.float32)
        x = sample(den, prompts, seed=tc.seed, stride=tc.sample_stride, guidance=tc.guidance, cond=cond)
        try:
            save_grid(to_uint8(x), out / "samples" / f"epoch-{epoch:04d}.png",
                      {"prompts": prompts, "epoch": epoch, "step": step, "seed": tc.seed, "stride": tc.sample_stride,
                       "guidance": tc.guidance, "weights": "ema"}, ncol=len(prompts),
                      scale=max(1, 64 // mc.image_size))
        except DfeditError as e:  # a grid is not worth losing the run (and its checkpoint) over
            log(f"warning: {e}; training goes on")

    start_epoch = step // steps_per_epoch
    if step >= total_steps:
        log(f"{out} already finished {tc.epochs} epochs; nothing to do")
        return {"step": step, "skipped": skipped, "images_per_s": None}
    ema_params, net_params = list(ema.parameters()), list(raw.parameters())
    losses, t_train, cpu_train, imgs_done, stopped = [], 0.0, 0.0, 0, False
    bar = _TrainBar(total_steps, step, enabled=progress and acc.is_main_process)
    if acc.is_main_process:
        rundir.trim_log(out, step, log)  # lines past the checkpoint resumed from will be written again
    logf = _Log(out / "log.jsonl", log) if acc.is_main_process else None
    bad_run, first_step = 0, step
    stop = StopRequest()
    try:
        with bar, stop:
            for epoch in range(start_epoch, tc.epochs):
                perm = epoch_order(D, n, tc.seed, epoch, device)
                ep_losses, ep_t0, ep_imgs = [], time.perf_counter(), 0
                for s in range(step - epoch * steps_per_epoch, steps_per_epoch):
                    if _stop_requested(stop, acc):
                        break
                    t0, c0 = time.perf_counter(), time.process_time()
                    lr = lr_at(step, total_steps, tc)
                    base = s * per_step + rank * tc.batch_size * tc.grad_accum
                    micro = [perm[base + j * tc.batch_size: base + (j + 1) * tc.batch_size]
                             for j in range(tc.grad_accum)]
                    loss_v, gnorm_v, ok = train_step(acc, net, fwd, opt, diff, D, micro, lr, step, rank, dc, tc)
                    if ok:
                        _ema_update(ema_params, net_params, tc.ema_decay, step)
                        losses.append(loss_v)
                        ep_losses.append(loss_v)
                        bad_run = 0
                        health["clean_steps"] += 1
                    else:
                        skipped += 1
                        bad_run += 1
                        if bad_run <= 3:
                            log(f"warning: non-finite loss/gradient at step {step} (loss {loss_v}, grad norm "
                                f"{gnorm_v}); step skipped ({skipped} so far)")
                        if bad_run >= max_bad_steps:
                            raise DfeditError(
                                f"training diverged: the loss or gradient was non-finite for {bad_run} steps in a row "
                                f"(steps {step - bad_run + 1}-{step}); stopped without saving, the last good "
                                f"checkpoint is {_name(health['protect'])}: lower --lr or check the data")
                    step += 1
                    dt = time.perf_counter() - t0
                    t_train += dt
                    cpu_train += time.process_time() - c0
                    imgs_done += per_step
                    ep_imgs += per_step
                    bar.update(epoch + 1, tc.epochs, loss_v, imgs_done / max(t_train, 1e-9))
                    over_cpu = max_cpu_seconds is not None and cpu_train >= max_cpu_seconds
                    if (over_cpu or (max_steps is not None and step >= max_steps)) and step < total_steps:
                        stopped = True
                        break
                done_epoch = step // steps_per_epoch
                if stop.signum is not None and step % steps_per_epoch:
                    break  # stopped mid-epoch: its log line comes when the epoch is trained to its end
                if logf is not None and ep_losses:
                    ep_time = time.perf_counter() - ep_t0
                    logf.write({"epoch": done_epoch, "step": step, "loss": float(np.mean(ep_losses)),
                                "lr": lr, "images_per_s": ep_imgs / ep_time, "epoch_s": ep_time, "skipped": skipped})
                    _plot_loss(out, log)
                if stopped:
                    save(done_epoch)
                    break
                if _stop_requested(stop, acc):
                    break
                last = epoch + 1 == tc.epochs
                if tc.sample_every and ((epoch + 1) % tc.sample_every == 0 or last):
                    validation_grid(epoch + 1)
                if (epoch + 1) % tc.save_every == 0 or last:
                    save(epoch + 1)
            if stop.signum is not None and step < total_steps:  # SIGINT / SIGTERM: save at this step, leave
                if step == first_step:
                    raise Stopped(f"stopped by {stop.name} before the first step; nothing new to save", stop.exit_code)
                if health["last_saved"] != step:
                    save(step // steps_per_epoch)
                raise Stopped(f"stopped by {stop.name} at step {step}; checkpoint saved (checkpoints/step-{step:08d}), "
                              f"run the same command to resume", stop.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping: leave at once, the last checkpoint is intact
        last = health["last_saved"]
        raise DfeditError(f"interrupted again at step {step}: stopped without saving" +
                          (f"; the last checkpoint is step-{last:08d}" if last is not None else "")) from None
    finally:
        if logf is not None:
            logf.close()
    return {"step": step, "skipped": skipped, "images_per_s": imgs_done / max(t_train, 1e-9),
            "mean_loss": float(np.mean(losses)) if losses else None, "train_seconds": t_train,
            "train_cpu_seconds": cpu_train,
            "steps_per_epoch": steps_per_epoch, "stopped_early": stopped, "world_size": world}


def _plot_loss(out: Path, log) -> None:
    """OUT/loss.png after every logged epoch; a plotting failure never stops training."""
    from .plot import loss_curve
    try:
        loss_curve(out)
    except Exception as e:  # noqa: BLE001 - a figure is not worth a run
        log(f"warning: could not draw {out / 'loss.png'}: {type(e).__name__}: {e}")


def warm_start(net: torch.nn.Module, source: str, log=print) -> None:
    """Copy another model's EMA weights into `net` wherever name and shape match (TrainConfig.init_from)."""
    ck, _ = eck.load(source)
    src = eck.load_tensors(ck, "ema")
    own = net.state_dict()
    same = {k: v for k, v in src.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if len(same) < len(own) // 2:
        raise DfeditError(f"{source} shares only {len(same)} of {len(own)} weights with this model: "
                          "it cannot start this run")
    net.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in same.items()}})
    left = sorted(set(own) - set(same))
    log(f"starting from the weights of {ck} ({len(same)} of {len(own)} tensors"
        + (f"; new: {', '.join(left[:4])}{'...' if len(left) > 4 else ''})" if left else ")"))


def _load_state(ck: Path, saved: dict, net, ema, opt) -> None:
    """Weights, EMA and AdamW moments of the checkpoint resumed from; a mismatch is one sentence."""
    try:
        net.load_state_dict(eck.load_tensors(ck, "model"))
        ema.load_state_dict(eck.load_tensors(ck, "ema"))
        opt.load_state_dict(ckpt.optimizer_from_flat(eck.load_tensors(ck, "optimizer"), saved["optimizer"]))
    except (RuntimeError, ValueError, KeyError) as e:
        raise DfeditError(f"{ck} does not match the model its config.json describes: "
                          f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None


def _non_finite(raw, ema) -> str | None:
    """The first weight (model or EMA) holding NaN/inf, or None."""
    from dfedit.cache import all_finite

    for which, m in (("model", raw), ("ema", ema)):
        for k, v in m.state_dict().items():
            if not all_finite(v):
                return f"{which} {k}"
    return None


def _name(path) -> str:
    return Path(path).name if path is not None else "none (no checkpoint was written)"


def _stop_requested(stop: StopRequest, acc) -> bool:
    """Whether a SIGINT/SIGTERM asks to stop; with several processes, any one's signal stops all."""
    if acc.num_processes == 1:
        return stop.signum is not None
    got = int(acc.gather(torch.tensor([stop.signum or 0], device=acc.device)).max().item())
    if got and stop.signum is None:
        stop.signum = got
    return got > 0


class _Log:
    """log.jsonl, one line per epoch; a failed write (disk full) is reported once, training goes on."""

    def __init__(self, path: Path, log):
        from dfedit.files import open_append

        self.path, self.log, self.failed, self.f = path, log, False, None
        try:  # never through a link planted at log.jsonl; a directory there is a warning, as a full disk is
            self.f = open_append(path)
        except OSError as e:
            self.failed = True
            kind = "a directory" if path.is_dir() else "a link" if path.is_symlink() else (e.strerror or str(e))
            log(f"warning: cannot append to {path} ({kind}); epochs are not logged, training goes on")

    def write(self, entry: dict) -> None:
        if self.failed:
            return
        try:
            self.f.write(json.dumps(entry) + "\n")
            self.f.flush()
        except OSError as e:
            self.failed = True
            self.log(f"warning: cannot append to {self.path} ({e.strerror or e}); epochs are no longer logged")

    def close(self) -> None:
        try:
            if self.f is not None:
                self.f.close()
        except OSError:
            pass


class _NullOnly:
    """Prompt encoder for in-training grids: prompts arrive pre-embedded; only "" is ever encoded."""

    def __init__(self, dim: int, length: int, device):
        self.dim, self.length, self.device = dim, length, device

    def encode(self, prompts: list[str]):
        from dfedit.denoiser import Cond

        if any(prompts):
            raise ValueError("validation grids pass their conditioning in directly")
        b = len(prompts)
        return Cond(text=torch.zeros(b, self.length, self.dim, device=self.device),
                    text_mask=torch.zeros(b, self.length, dtype=torch.bool, device=self.device))


class _TrainBar:
    """The training bar (dfedit.progress) over optimizer steps: epoch, smoothed loss and images/s."""

    INFO = "epoch {task.fields[epoch]}  loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"

    def __init__(self, total: int, done: int, enabled: bool):
        self._cm = progress_bar(total, "train", enabled, completed=done, info=self.INFO,
                                epoch="-", loss=float("nan"), ips=0.0)
        self._ema = None

    def __enter__(self):
        self._bar = self._cm.__enter__()
        return self

    def __exit__(self, *a):
        return self._cm.__exit__(*a)

    def update(self, epoch: int, epochs: int, loss: float, ips: float) -> None:
        if math.isfinite(loss):
            self._ema = loss if self._ema is None else 0.95 * self._ema + 0.05 * loss
        self._bar.advance(epoch=f"{epoch}/{epochs}", loss=self._ema or float("nan"), ips=ips)
