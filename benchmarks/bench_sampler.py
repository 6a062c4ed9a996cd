"""Sampler speed as ratios against references run in the same process, alternated, medians.

  (a) dfedit's loop vs the bare UNet forwards it needs (same count, same batch): the loop's own cost
  (b) IF: `DFEdit.sample` vs diffusers' IFPipeline on the same checkpoint, timesteps and seed,
      loop-only (prompt embeddings given) and end-to-end (load from disk + T5 + loop);
      emoji model: dfedit's loop vs a loop over diffusers' DDPMScheduler.step, same eps function
  (c) anagram (2 views) and hybrid (2 prompts): UNet calls per step and time per step vs sample
  (d) channels_last vs contiguous weights, same run (the evidence for each model's default)
  (e) emoji model: torch.compile'd vs eager network, and how many runs pay back the compile

IF runs on a tiny random IF-shaped stage I (dfedit.testing) unless --model names a real one; the
emoji rows run the shipped model (`--model emoji`). CPU, one thread by default: these machines are
shared and noisy, so only the ratios are meant to be compared.

    python benchmarks/run.py --only sampler                # how the docs table is made
    python benchmarks/bench_sampler.py                     # the same, printed only
    python benchmarks/bench_sampler.py --device cuda --model /path/to/IF-I-XL   # a real checkpoint
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT, SEED = "an oil painting of a snowy mountain village", 777


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(fns: dict, rounds: int, device) -> dict:
    """Run each fn once per round, in alternating order, after one untimed warm-up; medians per fn."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            times[k].append(timed(fns[k], device))
    return {k: statistics.median(v) for k, v in times.items()}


class CountingUNet(torch.nn.Module):
    """Wraps a network to count calls and batch sizes (proves 'one batched call per step')."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.calls = net, []
        self.config = getattr(net, "config", None)

    def forward(self, x, *a, **k):
        self.calls.append(x.shape[0])
        return self.inner(x, *a, **k)


def views_rows(label: str, den, cond, cond_b, uncond, scale, x0, ts, rounds, device, attr: str) -> list:
    """(c): anagram and hybrid against sample, counting the network calls per step."""
    from dfedit.edits import frequency_split, multi_guided
    from dfedit.sampler import cfg as cfg_fn, denoise_loop
    from dfedit.views import make_view

    size = den.sample_size
    counting = CountingUNet(getattr(den, attr))
    setattr(den, attr, counting)
    views = [make_view("identity", size), make_view("flip", size)]
    gen = lambda: torch.Generator().manual_seed(SEED)  # noqa: E731
    fns = {
        "sample": lambda: denoise_loop(cfg_fn(den, cond, uncond, scale), x0, ts, den.schedule, gen()),
        "anagram": lambda: denoise_loop(multi_guided(den, [cond, cond_b], uncond, scale, views), x0, ts,
                                        den.schedule, gen()),
        "hybrid": lambda: denoise_loop(multi_guided(den, [cond, cond_b], uncond, scale,
                                                    combine=frequency_split("gaussian", size, 2)),
                                       x0, ts, den.schedule, gen()),
    }
    calls = {}
    for k, fn in fns.items():
        counting.calls.clear()
        fn()
        calls[k] = (len(counting.calls) / len(ts), sorted(set(counting.calls)))
    m = alternate(fns, rounds, device)
    setattr(den, attr, counting.inner)
    rows = []
    for k in ("anagram", "hybrid"):
        per_step, batches = calls[k]
        rows.append((f"(c) {label}: {k} / sample per step ({per_step:g} network call/step, batch "
                     f"{'/'.join(map(str, batches))} vs {'/'.join(map(str, calls['sample'][1]))})",
                     m[k], m["sample"], "1 call/step"))
    return rows


def layout_row(label: str, net, run, rounds, device, default_cl: bool) -> tuple:
    """(d): the same run with the network's weights channels_last and contiguous; the default
    layout is put back afterwards."""
    def with_layout(fmt):
        def fn():
            net.to(memory_format=fmt)
            run()
        return fn
    m = alternate({"cl": with_layout(torch.channels_last), "contig": with_layout(torch.contiguous_format)},
                  rounds, device)
    net.to(memory_format=torch.channels_last if default_cl else torch.contiguous_format)
    return (f"(d) {label}: channels_last / contiguous weights, same run "
            f"(default here: {'channels_last' if default_cl else 'contiguous'})", m["cl"], m["contig"],
            "< 1 to turn it on")


def compile_row(label: str, den, attr: str, run, rounds, device) -> tuple:
    """(e): the same run with torch.compile'd network; the first (compiling) run is reported apart."""
    eager = getattr(den, attr)
    compiled = torch.compile(eager)
    setattr(den, attr, compiled)
    first = timed(run, device)

    def use(net):
        def fn():
            setattr(den, attr, net)
            run()
        return fn
    m = alternate({"compiled": use(compiled), "eager": use(eager)}, rounds, device)
    setattr(den, attr, eager)
    gain = m["eager"] - m["compiled"]
    runs = f"pays back after {(first - m['compiled']) / gain:.0f} runs" if gain > 0 else "never pays back"
    return (f"(e) {label}: torch.compile / eager network, same run (first run {first:.0f} s: {runs})",
            m["compiled"], m["eager"], "< 1 and soon paid back to turn on")


def if_rows(device: torch.device, model: str | None, rounds: int, size: int = 64) -> tuple[list, str]:
    from diffusers import IFPipeline

    from dfedit import DFEdit, testing
    from dfedit.backends.deepfloyd import configure_unet
    from dfedit.sampler import cfg as cfg_fn, denoise_loop, randn

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    tmp = Path(tempfile.mkdtemp())
    model = model or str(testing.save_tiny_if(tmp, stage1_size=size)[0])
    cache = tmp / "cache"

    df = DFEdit(model=model, device=str(device), dtype="auto", quiet=True, cache_dir=str(cache))
    s1 = df.stage1()
    ts = s1.schedule.strided_timesteps(30)  # what `dfedit sample` runs: 990, 960, ..., 0
    (cond, cond_b), uncond = df.conds(s1, [PROMPT, "a photo of a dog"], "", 1)
    ch, sz = s1.channels, s1.sample_size
    x0 = randn((1, ch, sz, sz), torch.Generator().manual_seed(SEED), device, dtype)
    rows = []

    # (a) loop vs bare forwards
    both = torch.cat([uncond.text, cond.text])

    def bare():
        x2 = torch.cat([x0, x0])
        with torch.inference_mode():
            for t in ts:
                s1.unet(x2, t, encoder_hidden_states=both, return_dict=False)

    def loop():
        denoise_loop(cfg_fn(s1, cond, uncond, 7.0), x0, ts, s1.schedule, torch.Generator().manual_seed(SEED))

    m = alternate({"bare": bare, "loop": loop}, rounds, device)
    rows.append((f"(a) IF: dfedit loop / bare UNet forwards ({len(ts)} steps, CFG batch 2)",
                 m["loop"], m["bare"], "≤ 1.02"))

    # (b) vs IFPipeline, whose UNet gets dfedit's device default layout, so both run the same kernels
    kw = dict(safety_checker=None, watermarker=None, feature_extractor=None, requires_safety_checker=False,
              dtype=dtype)
    pipe = IFPipeline.from_pretrained(model, **kw).to(device)
    configure_unet(pipe.unet, device)
    pipe.set_progress_bar_config(disable=True)

    def theirs_loop():
        pipe(prompt_embeds=cond.text, negative_prompt_embeds=uncond.text, timesteps=ts, guidance_scale=7.0,
             generator=torch.Generator().manual_seed(SEED), output_type="pt")

    def ours_loop():
        df.sample(PROMPT, seed=SEED, cfg=7.0, stride=30, upscale=False)

    m = alternate({"theirs": theirs_loop, "ours": ours_loop}, rounds, device)
    rows.append(("(b) IF: DFEdit.sample / IFPipeline, loop only (models loaded, embeddings given)",
                 m["ours"], m["theirs"], "≤ 1.0"))

    counter = [0]

    def theirs_e2e():
        p = IFPipeline.from_pretrained(model, **kw).to(device)
        configure_unet(p.unet, device)
        p.set_progress_bar_config(disable=True)
        p(PROMPT, timesteps=ts, guidance_scale=7.0, generator=torch.Generator().manual_seed(SEED),
          clean_caption=False, output_type="pt")

    def ours_e2e():
        counter[0] += 1  # a fresh cache each time: T5 runs, as it does in diffusers
        DFEdit(model=model, device=str(device), quiet=True, cache_dir=str(tmp / f"e2e{counter[0]}"),
               keep_loaded=False).sample(PROMPT, seed=SEED, cfg=7.0, upscale=False)

    m = alternate({"theirs": theirs_e2e, "ours": ours_e2e}, rounds, device)
    rows.append(("(b) IF: dfedit sample / IFPipeline, end to end (load + T5 + loop)",
                 m["ours"], m["theirs"], "≤ 1.0"))

    rows += views_rows("IF", s1, cond, cond_b, uncond, 7.0, x0, ts, rounds, device, "unet")
    rows.append(layout_row("IF", s1.unet, loop, rounds, device, default_cl=device.type == "cuda"))
    desc = ("tiny random IF-shaped stage I, " + f"{sz} px" if model.startswith(str(tmp)) else model)
    return rows, desc


def emoji_rows(device: torch.device, rounds: int, stride: int = 20, compile: bool = False) -> tuple[list, str]:
    from diffusers import DDPMScheduler

    from dfedit import DFEdit
    from dfedit.denoiser import Cond
    from dfedit.sampler import cfg as cfg_fn, denoise_loop, randn

    df = DFEdit(model="emoji", device=str(device), dtype="auto", quiet=True,
                cache_dir=tempfile.mkdtemp())
    den = df.stage1()
    scale = den.default_cfg
    (cond, cond_b), uncond = df.conds(den, ["grinning face", "red apple"], "", 1)
    ts = den.schedule.strided_timesteps(stride)
    sz = den.sample_size
    x0 = randn((1, 3, sz, sz), torch.Generator().manual_seed(SEED), device, torch.float32)
    eps_fn = cfg_fn(den, cond, uncond, scale)
    rows = []

    both = Cond.cat([uncond, cond])
    text, mask = both.text.to(device), both.text_mask.to(device)

    def bare():
        x2 = torch.cat([x0, x0]).to(den.dtype)  # the denoiser casts its input the same way
        with torch.no_grad():
            for t in ts:
                den.diffusion.predict(den.net, x2, torch.full((2,), t, device=device), text, mask)

    def loop():
        denoise_loop(eps_fn, x0, ts, den.schedule, torch.Generator().manual_seed(SEED))

    m = alternate({"bare": bare, "loop": loop}, rounds, device)
    rows.append((f"(a) emoji: dfedit loop / bare U-Net forwards ({len(ts)} steps, CFG batch 2)",
                 m["loop"], m["bare"], "≤ 1.02"))

    # (b) the same eps function stepped by diffusers' DDPMScheduler instead of our step math
    sched = DDPMScheduler.from_config({**den.schedule.config, "prediction_type": "epsilon"})
    sched.set_timesteps(timesteps=ts)

    def theirs():
        g, x = torch.Generator().manual_seed(SEED), x0
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(eps_fn(x, int(t))[0], t, x, generator=g).prev_sample

    m = alternate({"theirs": theirs, "ours": loop}, rounds, device)
    rows.append(("(b) emoji: dfedit loop / loop over diffusers DDPMScheduler.step (same eps, CFG)",
                 m["ours"], m["theirs"], "≤ 1.0"))
    rows += views_rows("emoji", den, cond, cond_b, uncond, scale, x0, ts, rounds, device, "net")
    rows.append(layout_row("emoji", den.net, loop, rounds, device, default_cl=False))
    if compile:
        rows.append(compile_row("emoji", den, "net", loop, rounds, device))
    return rows, f"the shipped emoji model ({sz} px, {len(ts)} steps, cfg {scale:g})"


def table(rows: list) -> str:
    lines = ["| measurement | ours (s) | reference (s) | ratio | goal |", "|---|---|---|---|---|"]
    for name, a, b, goal in rows:
        lines.append(f"| {name} | {a:.4f} | {b:.4f} | **{a / b:.3f}** | {goal} |")
    return "\n".join(lines)


def run(device: str = "cpu", model: str | None = None, rounds: int = 5, size: int = 64,
        emoji: bool = True, emoji_stride: int = 20, compile: bool = True) -> tuple[str, str]:
    """(description, markdown table)."""
    dev = torch.device(device)
    rows, desc = if_rows(dev, model, rounds, size)
    descs = [f"IF: {desc}"]
    if emoji:
        erows, edesc = emoji_rows(dev, rounds, emoji_stride, compile)
        rows += erows
        descs.append(f"emoji: {edesc}")
    return "; ".join(descs) + f"; {rounds} alternated rounds after a warm-up, medians.", table(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="stage I checkpoint dir (default: tiny random IF)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=64, help="tiny IF resolution")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    desc, tab = run(a.device, a.model, a.rounds, a.size)
    print(desc)
    print(tab)


if __name__ == "__main__":
    main()
