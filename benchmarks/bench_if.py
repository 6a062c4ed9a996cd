"""IF-I-XL and IF-II-L at full size, random weights: time per step, peak memory, one full run.

The UNets are built from the real configs (dfedit.testing.IF_I_XL_UNET / IF_II_L_UNET, keys from the
Hub's config.json files) with random weights: a step costs the same whatever the weights are, and
the real ones cannot be downloaded here. T5-XXL is not run; prompts become seeded random (77, 4096)
states, which is what the embedding cache hands the sampler on every run after the first. All the
sampling goes through `DFEdit` (the user's path: the one loop, CFG batched, stage II conditioning),
with the two denoisers put in place of the loaded ones.

Rows: stage I and stage II time per step at UNet batch 2 (one image, CFG) and 8 (anagram: 2 views
x 2 samples, CFG), peak GPU memory of each, the same step with channels_last off (the default is
on for CUDA), optionally torch.compile, and a full 34-step stage I + 50-step stage II sample.

    python benchmarks/bench_if.py --device cuda              # needs ~30 GB of GPU memory
    python benchmarks/bench_if.py --tiny                     # the same code on tiny configs (CPU smoke)
"""

from __future__ import annotations

import argparse
import hashlib
import statistics

import torch

from bench_sampler import PROMPT, timed
from dfedit.denoiser import Cond
from dfedit.sampler import randn


class RandomPromptEncoder:
    """Prompt -> seeded random T5-shaped states (stands in for T5-XXL plus the embedding cache)."""

    def __init__(self, dim: int, length: int = 77):
        self.dim, self.length = dim, length

    def encode(self, prompts: list[str]) -> Cond:
        out = []
        for p in prompts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(p.encode()).hexdigest()[:8], 16))
            out.append(torch.randn(self.length, self.dim, generator=g))
        return Cond(text=torch.stack(out))


def build(which: str, device: torch.device, dtype: torch.dtype, tiny: bool):
    """A random-weight IF denoiser from the real config (or the tiny test config)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from dfedit import testing
    from dfedit.backends.deepfloyd import IFDenoiser, configure_unet, quiet_hf_logging
    from dfedit.schedule import NoiseSchedule

    quiet_hf_logging()

    stage2 = which == "II"
    if tiny:
        unet = testing.tiny_stage2_unet(32) if stage2 else testing.tiny_stage1_unet(16)
    else:
        torch.manual_seed(0)
        with torch.device(device):  # initialise on the GPU: 4.3 B parameters on a CPU take minutes
            unet = UNet2DConditionModel(**(testing.IF_II_L_UNET if stage2 else testing.IF_I_XL_UNET))
    unet = configure_unet(unet.to(device=device, dtype=dtype).eval().requires_grad_(False), device)
    schedule = NoiseSchedule.from_config(testing._scheduler(1.0 if stage2 else 1.5).config)
    noising = NoiseSchedule.from_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config) if stage2 else None
    dim = unet.config.encoder_hid_dim
    name = f"random {'IF-II-L' if stage2 else 'IF-I-XL'}" + (" (tiny)" if tiny else "")
    den = IFDenoiser(unet, schedule, name, RandomPromptEncoder(dim), device, dtype, noising_schedule=noising)
    return den, sum(p.numel() for p in unet.parameters())


class Clock:
    """Wall time (synchronised) and peak GPU memory on one device."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None

    def time(self, fn) -> float:
        return timed(fn, self.device)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny configs, for a smoke run of this script on CPU")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed run (per-step rows)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd UNets")
    a = ap.parse_args(argv)
    from dfedit import DFEdit

    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    clock = Clock(device)
    prompt = PROMPT
    from dfedit.backends.deepfloyd import DeepFloyd
    s1, n1 = build("I", device, dtype, a.tiny)
    s2, n2 = build("II", device, dtype, a.tiny)
    df = DFEdit(model="random-IF-I-XL", stage2="random-IF-II-L", device=str(device), dtype="auto", quiet=True,
                info=DeepFloyd().describe(s1))  # models built here, not resolved from a name
    df._s1, df._s2 = s1, s2
    # T5 is replaced by seeded random states here: there is no tokenizer to check prompt lengths with.
    df.check_prompts = lambda prompts: None
    weights = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else None
    low = {n: randn((n, 3, s1.sample_size, s1.sample_size), torch.Generator().manual_seed(0), device, dtype)
           .clamp(-1, 1) for n in (1, 4)}
    stride = s1.schedule.num_train_timesteps // a.steps  # about a.steps steps of stage I
    runs = {
        "I": lambda n: df.sample(prompt, seed=0, num_samples=n, stride=stride, upscale=False),
        "II": lambda n: df.upscale(low[n], prompt, generator=torch.Generator().manual_seed(0), steps=a.steps),
    }
    steps_i = len(s1.schedule.strided_timesteps(stride))

    def per_step(stage: str, n: int) -> tuple[float, float | None]:
        runs[stage](n)  # warm-up (cuDNN autotuning, allocator)
        clock.reset_peak()
        times = [clock.time(lambda: runs[stage](n)) for _ in range(a.rounds)]
        return statistics.median(times) / (steps_i if stage == "I" else a.steps), clock.peak_gib()

    res = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "dtype": str(dtype).replace("torch.", ""), "params": {"I": n1, "II": n2}, "rows": [],
           "names": {"I": s1.name, "II": s2.name}, "weights_GiB": weights}
    for stage, den in (("I", s1), ("II", s2)):
        procs = sorted({type(p).__name__ for p in den.unet.attn_processors.values()})
        res.setdefault("attention", {})[stage] = procs
        for n in (1, 4):
            sec, peak = per_step(stage, n)
            res["rows"].append({"stage": stage, "batch": 2 * n, "variant": "default", "s_per_step": sec,
                                "peak_GiB": peak})
        if device.type == "cuda":  # the channels_last default, measured against contiguous
            den.unet.to(memory_format=torch.contiguous_format)
            sec, peak = per_step(stage, 1)
            res["rows"].append({"stage": stage, "batch": 2, "variant": "contiguous (channels_last off)",
                                "s_per_step": sec, "peak_GiB": peak})
            den.unet.to(memory_format=torch.channels_last)
        if a.compile:
            eager = den.unet
            den.unet = torch.compile(eager)
            t_compile = clock.time(lambda: runs[stage](1))
            sec, peak = per_step(stage, 1)
            res["rows"].append({"stage": stage, "batch": 2, "variant": f"torch.compile (first run {t_compile:.0f} s)",
                                "s_per_step": sec, "peak_GiB": peak})
            den.unet = eager

    # The user's full run: 34 strided steps of stage I, then 50 of stage II, one image with CFG.
    full = lambda: df.sample(prompt, seed=0, stride=30, upscale=True, stage2_steps=50)  # noqa: E731
    full()
    clock.reset_peak()
    res["full"] = {"seconds": statistics.median(clock.time(full) for _ in range(a.rounds)),
                   "steps": f"{len(s1.schedule.strided_timesteps(30))} + 50", "peak_GiB": clock.peak_gib()}
    return res


def table(res: dict) -> str:
    gib = lambda v: "n/a (CPU)" if v is None else f"{v:.1f}"  # noqa: E731
    names = res["names"]
    lines = ["| model | UNet batch | variant | s / step | peak GiB |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {names[r['stage']]} ({res['params'][r['stage']] / 1e9:.3f} B params) | {r['batch']} | "
                     f"{r['variant']} | {r['s_per_step']:.4f} | {gib(r['peak_GiB'])} |")
    f = res["full"]
    lines.append(f"| full sample, stage I + stage II ({f['steps']} steps, batch 2) | 2 | default | "
                 f"{f['seconds']:.2f} s total | {gib(f['peak_GiB'])} |")
    attn = "; ".join(f"{names[k]}: {', '.join(v)}" for k, v in res["attention"].items())
    w = res["weights_GiB"]
    held = "" if w is None else f" Peak memory counts both UNets' weights ({w:.1f} GiB), held together here."
    return "\n".join(lines) + f"\n\nDevice {res['device']}, {res['dtype']}. Attention processors: {attn}.{held}"


if __name__ == "__main__":
    print(table(main()))
