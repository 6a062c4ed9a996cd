"""The training loop: accelerate for devices/precision, everything else explicit.

One optimizer step, and why a resumed run is bit-exact, is step.py's; here the session around the
steps: model and optimizer (fresh or resumed), epochs, checkpoints, log lines, validation grids and
the stops (signals, limits, divergence).

The dataset (as float32 at training resolution) and the caption embeddings sit on the training
device: 3.5k emoji are ~170 MB at 64 px, far cheaper than a DataLoader feeding a GPU per step.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from dfedit.emoji import checkpoint as eck
from dfedit.emoji.denoiser import EmojiDenoiser
from dfedit.emoji.unet import UNet
from dfedit.errors import DfeditError
from dfedit.progress import progress_bar

from . import checkpoint as ckpt
from . import data as datamod
from . import rundir
from . import sets as setsmod
from .config import DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from .diffusion import Diffusion
from .sample import NullOnlyEncoder, sample, save_grid, to_uint8
from .signals import StopRequest
from .step import ema_update, epoch_order, lr_at, mix, train_step


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
    acc = _accelerator(tc.mixed_precision, cpu)
    out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        rundir.clean_temps(out, log)
    with acc.main_process_first():  # rank 0 fetches/caches data and captions; the others then read them
        D = training_data(dac, mc, acc.device)
    run = _Run(out, acc, replace(mc, text_dim=D["text_dim"]), dc, tc, dac, D, saved, log)
    if run.step >= run.total_steps:
        log(f"{out} already finished {tc.epochs} epochs; nothing to do")
        return {"step": run.step, "skipped": run.skipped, "images_per_s": None}
    return run.loop(progress, max_steps, max_cpu_seconds, max_bad_steps)


def _accelerator(mixed_precision: str, cpu: bool):
    from accelerate import Accelerator

    # Several processes without CUDA (torchrun, accelerate launch): accelerate forms a gloo group
    # only when told it is on the CPU; otherwise every rank would train alone and write the run.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        cpu = True
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, gradient_accumulation_steps=1)


def training_data(dac: DataConfig, mc: ModelConfig, device) -> dict:
    """What the run trains from, on the device: one drawing set (data.py) or several (sets.py)."""
    if dac.sets:
        return setsmod.prepare_sets(dac, mc.image_size, device, tuple(mc.styles))
    return datamod.prepare_data(dac, mc.image_size, device)


class _Run:
    """One training session of a run: the model, EMA and optimizer (fresh or resumed), the loop's
    counters, and what it writes (checkpoints, log lines, validation grids)."""

    def __init__(self, out: Path, acc, mc: ModelConfig, dc: DiffusionConfig, tc: TrainConfig, dac: DataConfig,
                 D: dict, saved: dict | None, log):
        self.out, self.acc, self.mc, self.dc, self.tc, self.dac, self.D, self.log = out, acc, mc, dc, tc, dac, D, log
        self.device, self.rank, self.world = acc.device, acc.process_index, acc.num_processes
        self.n = D["x"].shape[0]
        self.per_step = tc.batch_size * tc.grad_accum * self.world  # images per optimizer step, all processes
        if self.n < tc.batch_size * self.world:
            raise DfeditError(f"only {self.n} training images for a batch of {tc.batch_size} x {self.world} "
                              f"processes: lower --batch-size")
        self.steps_per_epoch = max(1, self.n // self.per_step)
        self.total_steps = self.steps_per_epoch * tc.epochs
        self.diff = Diffusion(dc, D["mean"], D["std"], self.device)
        self._build(saved)
        self.grid_rows = grid_indices(self.n, D["val_x"].shape[0], tc.grid_prompts, tc.seed)
        # this session's counters (cpu_before: earlier sessions' CPU time, for compute budgets)
        self.losses, self.t_train, self.cpu_train, self.imgs_done, self.bad_run = [], 0.0, 0.0, 0, 0
        self.stopped, self.lr = False, None

    def _build(self, saved: dict | None) -> None:
        """The model, its EMA and AdamW: initialised from the seed (or another model, init_from), or
        the checkpoint resumed from; then handed to accelerate."""
        tc = self.tc
        torch.manual_seed(tc.seed)  # model init only; the loop re-seeds per step
        net = UNet(self.mc).to(self.device)
        if saved is None and tc.init_from:
            warm_start(net, tc.init_from, self.log if self.acc.is_main_process else (lambda *_: None))
        self.ema = copy.deepcopy(net).requires_grad_(False).eval()
        opt = torch.optim.AdamW(ckpt.param_groups(net, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas))
        self.step, self.skipped, self.cpu_before, scaler_state, ck = 0, 0, 0.0, None, None
        if saved is not None:
            ck = Path(saved["_checkpoint_dir"]) if "_checkpoint_dir" in saved else eck.resolve(self.out)
            _load_state(ck, saved, net, self.ema, opt)
            st = saved["state"]
            self.step, self.skipped, scaler_state = st["step"], st["skipped_steps"], st.get("scaler")
            self.cpu_before = st.get("train_cpu_seconds", 0.0)
            if st["steps_per_epoch"] != self.steps_per_epoch:
                raise DfeditError(f"{self.out} was trained with {st['steps_per_epoch']} steps per epoch, this setup "
                                  f"gives {self.steps_per_epoch} (different data or number of processes)")
        self.net, self.opt = self.acc.prepare(net, opt)
        if scaler_state and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(scaler_state)
        self.raw = self.acc.unwrap_model(self.net)
        self.fwd = torch.compile(self.net) if tc.compile else self.net
        self.ema_params, self.net_params = list(self.ema.parameters()), list(self.raw.parameters())
        # The last checkpoint known to load and train cleanly: rotation never deletes it.
        self.protect, self.clean_steps = ck, 0
        self.last_saved = self.step if saved is not None else None

    # ---- the loop ----------------------------------------------------------------------------
    def loop(self, progress: bool, max_steps: int | None, max_cpu_seconds: float | None, max_bad_steps: int) -> dict:
        self.max_steps, self.max_cpu_seconds, self.max_bad_steps = max_steps, max_cpu_seconds, max_bad_steps
        main = self.acc.is_main_process
        self.bar = _TrainBar(self.total_steps, self.step, enabled=progress and main)
        if main:
            rundir.trim_log(self.out, self.step, self.log)  # lines past the checkpoint resumed from will be written again
        self.logf = rundir.EpochLog(self.out / "log.jsonl", self.log) if main else None
        first_step, stop = self.step, StopRequest()
        try:
            with self.bar, stop:
                for epoch in range(self.step // self.steps_per_epoch, self.tc.epochs):
                    if not self._epoch(epoch, stop):
                        break
                if stop.signum is not None and self.step < self.total_steps:
                    self._save_and_leave(stop, first_step)
        except KeyboardInterrupt:  # a second Ctrl-C while stopping: leave at once, the last checkpoint is intact
            last = self.last_saved
            raise DfeditError(f"interrupted again at step {self.step}: stopped without saving" +
                              (f"; the last checkpoint is step-{last:08d}" if last is not None else "")) from None
        finally:
            if self.logf is not None:
                self.logf.close()
        return {"step": self.step, "skipped": self.skipped, "images_per_s": self.imgs_done / max(self.t_train, 1e-9),
                "mean_loss": float(np.mean(self.losses)) if self.losses else None, "train_seconds": self.t_train,
                "train_cpu_seconds": self.cpu_train, "steps_per_epoch": self.steps_per_epoch,
                "stopped_early": self.stopped, "world_size": self.world}

    def _epoch(self, epoch: int, stop: StopRequest) -> bool:
        """Train epoch `epoch` from the current step to its end, then log, draw and save as the
        config asks. False when the run stops here (a signal, or a step or CPU-time limit)."""
        tc, spe = self.tc, self.steps_per_epoch
        perm = epoch_order(self.D, self.n, tc.seed, epoch, self.device)
        ep_losses, ep_t0, ep_imgs = [], time.perf_counter(), 0
        for s in range(self.step - epoch * spe, spe):
            if _stop_requested(stop, self.acc):
                break
            loss_v = self._step(epoch, s, perm)
            if loss_v is not None:
                ep_losses.append(loss_v)
            ep_imgs += self.per_step
            if self._limit_reached() and self.step < self.total_steps:
                self.stopped = True
                break
        done_epoch = self.step // spe
        if stop.signum is not None and self.step % spe:
            return False  # stopped mid-epoch: its log line comes when the epoch is trained to its end
        if self.logf is not None and ep_losses:
            ep_time = time.perf_counter() - ep_t0
            self.logf.write({"epoch": done_epoch, "step": self.step, "loss": float(np.mean(ep_losses)), "lr": self.lr,
                             "images_per_s": ep_imgs / ep_time, "epoch_s": ep_time, "skipped": self.skipped})
            _plot_loss(self.out, self.log)
        if self.stopped:
            self.save(done_epoch)
            return False
        if _stop_requested(stop, self.acc):
            return False
        last = epoch + 1 == tc.epochs
        if tc.sample_every and ((epoch + 1) % tc.sample_every == 0 or last):
            self.validation_grid(epoch + 1)
        if (epoch + 1) % tc.save_every == 0 or last:
            self.save(epoch + 1)
        return True

    def _step(self, epoch: int, s: int, perm: torch.Tensor) -> float | None:
        """Optimizer step `self.step`, the s-th of its epoch, and its bookkeeping: EMA, counters,
        the bar. Its loss, or None when it was skipped as non-finite."""
        tc = self.tc
        t0, c0 = time.perf_counter(), time.process_time()
        self.lr = lr_at(self.step, self.total_steps, tc)
        base = s * self.per_step + self.rank * tc.batch_size * tc.grad_accum
        micro = [perm[base + j * tc.batch_size: base + (j + 1) * tc.batch_size] for j in range(tc.grad_accum)]
        loss_v, gnorm_v, ok = train_step(self.acc, self.net, self.fwd, self.opt, self.diff, self.D, micro, self.lr,
                                         self.step, self.rank, self.dc, tc)
        if ok:
            ema_update(self.ema_params, self.net_params, tc.ema_decay, self.step)
            self.losses.append(loss_v)
            self.bad_run = 0
            self.clean_steps += 1
        else:
            self._skipped(loss_v, gnorm_v)
        self.step += 1
        self.t_train += time.perf_counter() - t0
        self.cpu_train += time.process_time() - c0
        self.imgs_done += self.per_step
        self.bar.update(epoch + 1, tc.epochs, loss_v, self.imgs_done / max(self.t_train, 1e-9))
        return loss_v if ok else None

    def _skipped(self, loss_v: float, gnorm_v: float) -> None:
        """A non-finite step: warn (the first three in a row), stop when there are too many in a row."""
        self.skipped += 1
        self.bad_run += 1
        if self.bad_run <= 3:
            self.log(f"warning: non-finite loss/gradient at step {self.step} (loss {loss_v}, grad norm "
                     f"{gnorm_v}); step skipped ({self.skipped} so far)")
        if self.bad_run >= self.max_bad_steps:
            raise DfeditError(
                f"training diverged: the loss or gradient was non-finite for {self.bad_run} steps in a row "
                f"(steps {self.step - self.bad_run + 1}-{self.step}); stopped without saving, the last good "
                f"checkpoint is {_name(self.protect)}: lower --lr or check the data")

    def _limit_reached(self) -> bool:
        over_cpu = self.max_cpu_seconds is not None and self.cpu_train >= self.max_cpu_seconds
        return over_cpu or (self.max_steps is not None and self.step >= self.max_steps)

    def _save_and_leave(self, stop: StopRequest, first_step: int) -> None:
        """SIGINT / SIGTERM: save at this step (unless nothing was trained) and leave with `Stopped`."""
        if self.step == first_step:
            raise Stopped(f"stopped by {stop.name} before the first step; nothing new to save", stop.exit_code)
        if self.last_saved != self.step:
            self.save(self.step // self.steps_per_epoch)
        raise Stopped(f"stopped by {stop.name} at step {self.step}; checkpoint saved "
                      f"(checkpoints/step-{self.step:08d}), run the same command to resume", stop.exit_code)

    # ---- what it writes ------------------------------------------------------------------------
    def config_dict(self, epoch: int) -> dict:
        """config.json of a checkpoint at this step: the run's configs, data statistics and state."""
        mc, dc, tc, dac, D, acc = self.mc, self.dc, self.tc, self.dac, self.D, self.acc
        return {
            "model": asdict(mc), "diffusion": asdict(dc), "schedule": dc.scheduler_config(), "train": asdict(tc),
            "data": {**asdict(dac), "mean": D["mean"], "std": D["std"], "source_desc": D["source"],
                     "n_train": self.n, "n_val": int(D["val_x"].shape[0]), "image_size": mc.image_size},
            "text_encoder": {"name": dac.text_encoder, "identity": D["text_identity"],
                             "max_length": dac.max_length, "dim": D["text_dim"]},
            "state": {"step": self.step, "epoch": epoch, "steps_per_epoch": self.steps_per_epoch,
                      "total_steps": self.total_steps, "images_seen": self.step * self.per_step,
                      "skipped_steps": self.skipped, "world_size": self.world,
                      # process CPU time in training steps over every session of the run (compute budgets)
                      "train_cpu_seconds": round(self.cpu_before + self.cpu_train, 1),
                      "scaler": acc.scaler.state_dict() if acc.scaler is not None else None},
            "versions": {"torch": torch.__version__},
        }

    def save(self, epoch: int) -> None:
        acc, raw, ema, world = self.acc, self.raw, self.ema, self.world
        if world > 1:  # what rank 0 writes must be every rank's state: DDP keeps them in step
            sums = torch.stack([sum(p.detach().double().sum() for p in raw.parameters()),
                                sum(p.detach().double().sum() for p in ema.parameters())])
            every = acc.gather(sums.to(self.device)).view(world, 2).cpu()
            if not torch.allclose(every, every[:1].expand_as(every), rtol=1e-9, atol=0, equal_nan=True):
                raise DfeditError(f"the {world} processes hold different weights at step {self.step}: "
                                  "gradients were not synchronised")
        if acc.is_main_process:
            bad = _non_finite(raw, ema)
            if bad:
                raise DfeditError(f"the weights became non-finite at step {self.step} ({bad}); not saving them: the "
                                  f"last good checkpoint is {_name(self.protect)}; lower --lr and resume")
            opt = self.opt
            path = ckpt.save(self.out, self.step, self.config_dict(epoch), raw.state_dict(), ema.state_dict(),
                             opt.optimizer.state_dict() if hasattr(opt, "optimizer") else opt.state_dict(),
                             self.tc.keep_checkpoints, protect=self.protect)
            if self.clean_steps > 0 or self.protect is None:
                self.protect = path
            self.clean_steps = 0
        self.last_saved = self.step
        acc.wait_for_everyone()

    def validation_grid(self, epoch: int) -> None:
        """samples/epoch-N.png: the EMA model on fixed training and held-out captions (grid_indices)."""
        if not self.acc.is_main_process:
            return
        from dfedit.denoiser import Cond

        D, mc, tc = self.D, self.mc, self.tc
        gt, gv = self.grid_rows
        prompts = [D["captions"][i] for i in gt] + [D["val_captions"][i] for i in gv]
        cond = Cond(text=torch.cat([D["text"][gt], D["val_text"][gv]]).float(),
                    text_mask=torch.cat([D["mask"][gt], D["val_mask"][gv]]))
        den = EmojiDenoiser(copy.deepcopy(self.ema), self.diff, NullOnlyEncoder(mc.text_dim, self.dac.max_length, self.device),
                            mc.image_size, str(self.out), self.device, torch.float32)
        x = sample(den, prompts, seed=tc.seed, stride=tc.sample_stride, guidance=tc.guidance, cond=cond)
        try:
            save_grid(to_uint8(x), self.out / "samples" / f"epoch-{epoch:04d}.png",
                      {"prompts": prompts, "epoch": epoch, "step": self.step, "seed": tc.seed,
                       "stride": tc.sample_stride, "guidance": tc.guidance, "weights": "ema"}, ncol=len(prompts),
                      scale=max(1, 64 // mc.image_size))
        except DfeditError as e:  # a grid is not worth losing the run (and its checkpoint) over
            self.log(f"warning: {e}; training goes on")


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
