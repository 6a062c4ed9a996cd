"""Training throughput: our emoji U-Net vs diffusers' UNet2DConditionModel of (about) equal FLOPs.

Both networks get the same layout (levels, ResNet blocks per level, cross-attention at the same
levels, text width 384) and the diffusers widths are scaled until its forward+backward FLOPs (as
counted by torch.utils.flop_counter) match ours; then full training steps (AdamW, MSE on noise,
random text with a padding mask) are timed alternately A, B, A, B, ... in one process and the
medians reported. Not a test: run it by hand.

    python benchmarks/bench_train.py                      # CPU: the cpu preset at 32 px
    python benchmarks/bench_train.py --preset gpu --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dfedit_train.config import preset
from dfedit_train.unet import UNet

TEXT_DIM, TEXT_LEN = 384, 24


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds (medians reported)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile both (GPU)")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    mc = preset(a.preset)[0]

    torch.manual_seed(0)
    ours = UNet(mc).to(device)
    f_ours = train_flops(ours_fn(ours), ours.parameters(), mc, device)
    # Scale diffusers' widths until its training FLOPs match ours (it spends more per width).
    best = None
    for s in [i / 32 for i in range(8, 49)]:
        m, widths = diffusers_unet(mc, s)
        if best is not None and widths == best[2]:
            continue
        f = train_flops(theirs_fn(m), m.parameters(), mc, torch.device("cpu"))
        if best is None or abs(f - f_ours) < abs(best[1] - f_ours):
            best = (s, f, widths)
        if f > 1.3 * f_ours:
            break
    theirs, widths = diffusers_unet(mc, best[0])
    theirs = theirs.to(device)
    f_theirs = best[1]
    nets = {"ours": (ours, ours_fn(ours)), "diffusers": (theirs, theirs_fn(theirs))}
    opts, fns = {}, {}
    for k, (net, fn) in nets.items():
        net.train()
        if a.channels_last:
            net.to(memory_format=torch.channels_last)
        opts[k] = torch.optim.AdamW(net.parameters(), lr=1e-4)
        fns[k] = torch.compile(fn) if a.compile else fn
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if a.dtype == "bf16" else nullcontext
    g = torch.Generator().manual_seed(1)
    data = [batch(mc, a.batch, device, g) for _ in range(4)]
    for k in nets:  # warm-up (and compile)
        timed_steps(fns[k], opts[k], data, 2, device, amp)
    res = {k: [] for k in nets}
    for r in range(a.rounds):
        order = list(nets) if r % 2 == 0 else list(nets)[::-1]  # alternate who goes first
        for k in order:
            res[k].append(timed_steps(fns[k], opts[k], data, a.steps, device, amp))
        print(f"round {r + 1}: " + ", ".join(f"{k} {res[k][-1]:.1f} img/s" for k in nets), flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "preset": a.preset, "image_size": mc.image_size, "batch": a.batch, "dtype": a.dtype,
        "compile": a.compile, "channels_last": a.channels_last, "torch": torch.__version__,
        "ours": {"channels": list(mc.channels), "params_M": sum(p.numel() for p in ours.parameters()) / 1e6,
                 "train_GFLOP_per_img": f_ours / 1e9, "img_per_s": med["ours"]},
        "diffusers": {"channels": widths, "params_M": sum(p.numel() for p in theirs.parameters()) / 1e6,
                      "train_GFLOP_per_img": f_theirs / 1e9, "img_per_s": med["diffusers"]},
        "speedup": med["ours"] / med["diffusers"],
        "speedup_per_flop": (med["ours"] * f_ours) / (med["diffusers"] * f_theirs),
    }
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
