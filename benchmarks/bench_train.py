"""Training throughput: our emoji U-Net vs diffusers' UNet2DConditionModel of (about) equal FLOPs.

Both networks get the same layout (levels, ResNet blocks per level, cross-attention at the same
levels, text width 384) and the diffusers widths are scaled until its forward+backward FLOPs (as
counted by torch.utils.flop_counter) match ours; then full training steps (AdamW, MSE on noise,
random text with a padding mask) are timed alternately A, B, A, B, ... in one process and the
medians reported. Not a test: run it by hand.

    python benchmarks/run.py --only train                 # how the docs table is made
    python benchmarks/bench_train.py                      # CPU: the cpu preset at 32 px, fp32
    python benchmarks/bench_train.py --preset gpu --device cuda --dtype bf16 --compile --peak-tflops 800
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dfedit_train.config import preset
from dfedit.emoji.unet import UNet

TEXT_DIM, TEXT_LEN = 384, 24


# The network diffusers can mirror layer for layer: its UNet2DConditionModel has no pixel-unshuffle
# stem and no pooled-caption path, so for the cpu preset (which has both since issue 10) the
# comparison keeps the layout it had before, the 4.9 M 32/64/128 net with cross-attention at 16 and
# 8 px. What is measured is the U-Net implementation against diffusers', not the preset's recipe.
COMPARABLE = {"cpu": dict(channels=(32, 64, 128), cross_attn=(False, True, True), patch=1, pooled_text=False)}


def bench_layout(preset_name: str):
    mc = preset(preset_name)[0]
    return dataclasses.replace(mc, **COMPARABLE.get(preset_name, {}))


def diffusers_unet(mc, scale: float):
    from diffusers import UNet2DConditionModel

    widths = [max(32, int(round(c * scale / 32)) * 32) for c in mc.channels]
    down = ["CrossAttnDownBlock2D" if ca else "DownBlock2D" for ca in mc.cross_attn]
    up = ["CrossAttnUpBlock2D" if ca else "UpBlock2D" for ca in reversed(mc.cross_attn)]
    heads = [max(1, w // mc.head_dim) for w in widths]  # diffusers' `attention_head_dim` is the head count
    return UNet2DConditionModel(
        sample_size=mc.image_size, in_channels=3, out_channels=3, block_out_channels=tuple(widths),
        down_block_types=tuple(down), up_block_types=tuple(up), layers_per_block=mc.num_res_blocks,
        cross_attention_dim=TEXT_DIM, attention_head_dim=tuple(heads), norm_num_groups=32,
    ), widths


def batch(mc, b, device, g):
    x = torch.randn(b, 3, mc.image_size, mc.image_size, generator=g).to(device)
    t = torch.randint(0, 1000, (b,), generator=g).to(device)
    text = torch.randn(b, TEXT_LEN, TEXT_DIM, generator=g).to(device)
    mask = torch.arange(TEXT_LEN)[None] < torch.randint(3, TEXT_LEN, (b, 1), generator=g)
    return x, t, text, mask.to(device)


def ours_fn(net):
    return lambda x, t, text, mask: net(x, t, text, mask)


def theirs_fn(net):
    return lambda x, t, text, mask: net(x, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample


def train_flops(fn, params, mc, device) -> float:
    x, t, text, mask = batch(mc, 2, device, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as fc:
        fn(x, t, text, mask).square().mean().backward()
    for p in params:
        p.grad = None
    return fc.get_total_flops() / 2


def timed_steps(fn, opt, data, steps, device, amp) -> float:
    """Images per second over `steps` full optimizer steps."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        x, t, text, mask = data[i % len(data)]
        with amp():
            loss = F.mse_loss(fn(x, t, text, mask).float(), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return steps * data[0][0].shape[0] / (time.perf_counter() - t0)


@functools.lru_cache(maxsize=None)
def matched_diffusers(preset_name: str) -> tuple[float, float, float, tuple[int, ...]]:
    """(our train FLOP/img, diffusers width scale, its FLOP/img, its widths): diffusers' widths
    scaled until its training FLOPs come closest to ours (it spends more per unit of width)."""
    mc = bench_layout(preset_name)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    ours = UNet(mc)
    f_ours = train_flops(ours_fn(ours), ours.parameters(), mc, cpu)
    best = None
    for s in [i / 32 for i in range(8, 49)]:
        m, widths = diffusers_unet(mc, s)
        if best is not None and widths == best[2]:
            continue
        f = train_flops(theirs_fn(m), m.parameters(), mc, cpu)
        if best is None or abs(f - f_ours) < abs(best[1] - f_ours):
            best = (s, f, widths)
        if f > 1.3 * f_ours:
            break
    return f_ours, best[0], best[1], tuple(best[2])


def data_ms(mc, device, batch_size: int, n_images: int = 3457, reps: int = 50) -> float:
    """Milliseconds to assemble one batch with the trainer's own `draw_batch` from device-resident
    data the size of the emoji train split: what feeding the network costs per step."""
    from dfedit_train.diffusion import EpsObjective
    from dfedit_train.step import draw_batch

    g = torch.Generator(device).manual_seed(0)
    S = mc.image_size
    D = {"x": torch.rand(n_images, 3, S, S, device=device) * 2 - 1,
         "text": torch.randn(n_images, TEXT_LEN, TEXT_DIM, device=device),
         "mask": torch.ones(n_images, TEXT_LEN, dtype=torch.bool, device=device),
         "flip_ok": torch.ones(n_images, dtype=torch.bool, device=device)}
    perm = torch.randperm(n_images, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    objective = EpsObjective(1000)
    draw_batch(D, perm[:batch_size], g, objective, 0.1, 0.5)
    sync()
    t0 = time.perf_counter()
    for i in range(reps):
        j = (i * batch_size) % (n_images - batch_size)
        draw_batch(D, perm[j:j + batch_size], g, objective, 0.1, 0.5)
    sync()
    return (time.perf_counter() - t0) / reps * 1e3


def compare(preset_name: str = "cpu", device: str = "cpu", dtype: str = "fp32", compile: bool = False,
            channels_last: bool = False, batch_size: int = 32, steps: int = 3, rounds: int = 5,
            peak_tflops: float | None = None, log=print) -> dict:
    """Our U-Net vs diffusers' at matched FLOPs: full training steps alternated A/B, medians."""
    device = torch.device(device)
    mc = bench_layout(preset_name)
    f_ours, scale, f_theirs, widths = matched_diffusers(preset_name)
    torch.manual_seed(0)
    ours = UNet(mc).to(device)
    theirs, _ = diffusers_unet(mc, scale)
    theirs = theirs.to(device)
    nets = {"ours": (ours, ours_fn(ours)), "diffusers": (theirs, theirs_fn(theirs))}
    opts, fns = {}, {}
    for k, (net, fn) in nets.items():
        net.train()
        if channels_last:
            net.to(memory_format=torch.channels_last)
        opts[k] = torch.optim.AdamW(net.parameters(), lr=1e-4)
        fns[k] = torch.compile(fn) if compile else fn
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16" else nullcontext
    g = torch.Generator().manual_seed(1)
    data = [batch(mc, batch_size, device, g) for _ in range(4)]
    warm = {}
    for k in nets:  # warm-up (and compile): its time is reported, not counted
        t0 = time.perf_counter()
        timed_steps(fns[k], opts[k], data, 2, device, amp)
        warm[k] = time.perf_counter() - t0
    res = {k: [] for k in nets}
    for r in range(rounds):
        order = list(nets) if r % 2 == 0 else list(nets)[::-1]  # alternate who goes first
        for k in order:
            res[k].append(timed_steps(fns[k], opts[k], data, steps, device, amp))
        log(f"round {r + 1}: " + ", ".join(f"{k} {res[k][-1]:.1f} img/s" for k in nets))
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "preset": preset_name, "image_size": mc.image_size, "batch": batch_size, "dtype": dtype,
        "compile": compile, "channels_last": channels_last, "torch": torch.__version__, "rounds": rounds,
        "ours": {"channels": list(mc.channels), "params_M": sum(p.numel() for p in ours.parameters()) / 1e6,
                 "train_GFLOP_per_img": f_ours / 1e9, "img_per_s": med["ours"], "warmup_s": warm["ours"]},
        "diffusers": {"channels": list(widths), "params_M": sum(p.numel() for p in theirs.parameters()) / 1e6,
                      "train_GFLOP_per_img": f_theirs / 1e9, "img_per_s": med["diffusers"],
                      "warmup_s": warm["diffusers"]},
        "speedup": med["ours"] / med["diffusers"],
        "speedup_per_flop": (med["ours"] * f_ours) / (med["diffusers"] * f_theirs),
        "data_ms_per_batch": data_ms(mc, device, batch_size),
        "step_ms": batch_size / med["ours"] * 1e3,
    }
    if peak_tflops:
        out["mfu"] = med["ours"] * f_ours / (peak_tflops * 1e12)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds (medians reported)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile both")
    ap.add_argument("--peak-tflops", type=float, default=None, help="report model FLOP utilisation against this")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = compare(a.preset, a.device, a.dtype, a.compile, a.channels_last, a.batch, a.steps, a.rounds,
                  a.peak_tflops)
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
