"""One optimizer step: its batch, drawn on the device, the update, the EMA, and where every random
draw comes from.

Determinism and resume: every random draw of optimizer step s (batch order, timesteps, noise, CFG
dropout, flips, nn.Dropout) comes from generators seeded by (seed, epoch) or (seed, step, rank), not
from a stream that runs through the whole run. The training RNG state at step s is therefore a
function of s, so a checkpoint that stores step, weights, EMA and AdamW moments (the learning rate
is a function of s too) resumes to exactly the run that was never interrupted; tests check it
bit-for-bit on CPU.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .config import DiffusionConfig, TrainConfig
from .diffusion import Diffusion, Objective


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


def ema_update(ema_params: list, net_params: list, ema_decay: float, step: int) -> None:
    """EMA of the weights after optimizer step `step`, with the usual warm-up of the decay."""
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, net_params, 1 - decay)
