"""Sampler speed as ratios against references run in the same process, alternated, medians.

  (a) dfedit's loop vs the bare UNet forwards it needs (same count, same batch): the loop's own cost
  (b) `DFEdit.sample` vs diffusers' IFPipeline on the same checkpoint, timesteps and seed:
      loop-only (prompt embeddings given) and end-to-end (load from disk + T5 + loop)
  (c) anagram (2 views) and hybrid (2 prompts): UNet calls per step and time per step vs sample

Default: a tiny random IF-shaped stage I at 64 px (dfedit.testing) on CPU, one thread, because
these machines are shared and noisy: only the ratios are meant to be compared.

    python benchmarks/bench_sampler.py                     # CPU, prints the table
    python benchmarks/bench_sampler.py --write             # ... and updates docs/benchmarks.md
    python benchmarks/bench_sampler.py --device cuda --model /path/to/IF-I-XL   # a real checkpoint
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import update_section  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
    """Run each fn once per round, in alternating order; medians per fn."""
    times = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            times[k].append(timed(fns[k], device))
    return {k: statistics.median(v) for k, v in times.items()}


class CountingUNet(torch.nn.Module):
    """Wraps a UNet to count calls and batch sizes (proves 'one batched call per step')."""

    def __init__(self, unet):
        super().__init__()
        self.inner, self.calls = unet, []
        self.config = unet.config

    def forward(self, x, *a, **k):
        self.calls.append(x.shape[0])
        return self.inner(x, *a, **k)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="stage I checkpoint dir (default: tiny random 64 px)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    from diffusers import IFPipeline

    from dfedit import DFEdit
    from dfedit.edits import multi_guided, frequency_split
    from dfedit.sampler import cfg as cfg_fn, denoise_loop, randn
    from dfedit.views import make_view
    from dfedit import testing

    tmp = Path(tempfile.mkdtemp())
    model = args.model or str(testing.save_tiny_if(tmp, stage1_size=64)[0])
    os.environ["DFEDIT_CACHE"] = str(tmp / "cache")
    prompt, seed = "an oil painting of a snowy mountain village", 777
    ts = list(range(990, -1, -30))

    df = DFEdit(model=model, device=str(device), dtype="auto", quiet=True)
    s1 = df.stage1()
    (cond,), uncond = df.conds(s1, [prompt], "", 1)
    (cond_b,), _ = df.conds(s1, ["a photo of a dog"], "", 1)
    size, ch = s1.sample_size, s1.channels
    rows = []

    # (a) loop vs bare forwards ---------------------------------------------------------------------
    both = torch.cat([uncond.text, cond.text])
    x0 = randn((1, ch, size, size), torch.Generator().manual_seed(seed), device, dtype)

    def bare():
        x2 = torch.cat([x0, x0])
        with torch.inference_mode():
            for t in ts:
                s1.unet(x2, t, encoder_hidden_states=both, return_dict=False)

    def loop():
        g = torch.Generator().manual_seed(seed)
        denoise_loop(cfg_fn(s1, cond, uncond, 7.0), x0, ts, s1.schedule, g)

    m = alternate({"bare": bare, "loop": loop}, args.rounds, device)
    rows.append(("(a) dfedit loop / bare UNet forwards (34 steps, CFG batch 2)", m["loop"], m["bare"], "≤ 1.02"))

    # (b) vs IFPipeline -----------------------------------------------------------------------------
    pipe = IFPipeline.from_pretrained(model, safety_checker=None, watermarker=None, feature_extractor=None,
                                      requires_safety_checker=False, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def theirs_loop():
        pipe(prompt_embeds=cond.text, negative_prompt_embeds=uncond.text, timesteps=ts, guidance_scale=7.0,
             generator=torch.Generator().manual_seed(seed), output_type="pt")

    def ours_loop():
        df.sample(prompt, seed=seed, cfg=7.0, stride=30, upscale=False)

    m = alternate({"theirs": theirs_loop, "ours": ours_loop}, args.rounds, device)
    rows.append(("(b) DFEdit.sample / IFPipeline, loop only (models loaded, embeddings given)",
                 m["ours"], m["theirs"], "≤ 1.0"))

    counter = [0]

    def theirs_e2e():
        p = IFPipeline.from_pretrained(model, safety_checker=None, watermarker=None, feature_extractor=None,
                                       requires_safety_checker=False, dtype=dtype).to(device)
        p.set_progress_bar_config(disable=True)
        p(prompt, timesteps=ts, guidance_scale=7.0, generator=torch.Generator().manual_seed(seed),
          clean_caption=False, output_type="pt")

    def ours_e2e():
        counter[0] += 1  # a fresh cache each time: T5 runs, as it does in diffusers
        DFEdit(model=model, device=str(device), quiet=True, cache_dir=str(tmp / f"e2e{counter[0]}"),
               keep_loaded=False).sample(prompt, seed=seed, cfg=7.0, upscale=False)

    m = alternate({"theirs": theirs_e2e, "ours": ours_e2e}, max(3, args.rounds // 2), device)
    rows.append(("(b) dfedit sample / IFPipeline, end to end (load + T5 + loop)", m["ours"], m["theirs"], "≤ 1.0"))

    # (c) anagram / hybrid: one batched call per step -----------------------------------------------
    counting = CountingUNet(s1.unet)
    s1.unet = counting
    views = [make_view("identity", size), make_view("flip", size)]
    fns = {
        "sample": lambda: denoise_loop(cfg_fn(s1, cond, uncond, 7.0), x0, ts, s1.schedule,
                                       torch.Generator().manual_seed(seed)),
        "anagram": lambda: denoise_loop(multi_guided(s1, [cond, cond_b], uncond, 7.0, views), x0, ts,
                                        s1.schedule, torch.Generator().manual_seed(seed)),
        "hybrid": lambda: denoise_loop(multi_guided(s1, [cond, cond_b], uncond, 7.0,
                                                    combine=frequency_split("gaussian", size, 2)),
                                       x0, ts, s1.schedule, torch.Generator().manual_seed(seed)),
    }
    calls = {}
    for k, fn in fns.items():
        counting.calls.clear()
        fn()
        calls[k] = (len(counting.calls) / len(ts), sorted(set(counting.calls)))
    m = alternate(fns, args.rounds, device)
    for k in ("anagram", "hybrid"):
        per_step, batches = calls[k]
        rows.append((f"(c) {k} / sample per step ({per_step:g} UNet call/step, batch {batches[0]} vs 2)",
                     m[k], m["sample"], "1 call/step"))
    s1.unet = counting.inner

    lines = ["| measurement | ours (s) | reference (s) | ratio | goal |", "|---|---|---|---|---|"]
    for name, a, b, goal in rows:
        lines.append(f"| {name} | {a:.4f} | {b:.4f} | **{a / b:.3f}** | {goal} |")
    table = "\n".join(lines)
    env = (f"Machine: {device} ({torch.get_num_threads()} thread(s)), torch {torch.__version__}; model: "
           f"{'tiny random IF-shaped stage I, 64 px' if args.model is None else args.model}; "
           f"{args.rounds} alternated rounds, medians. Command: `python benchmarks/bench_sampler.py"
           f"{' --device ' + args.device if args.device != 'cpu' else ''}`.")
    print(env)
    print(table)
    if args.write:
        update_section("sampler-" + device.type, f"{env}\n\n{table}")


if __name__ == "__main__":
    main()
