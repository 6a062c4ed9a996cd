"""Every benchmark, one command: measures, then rewrites its sections of docs/benchmarks.md.

    python benchmarks/run.py                   # CPU (about 26 min): sampler + trainer tables
    python benchmarks/run.py --device cuda     # GPU: the same tables on the GPU, plus IF-I-XL / IF-II-L
    python benchmarks/run.py --quick --doc /tmp/b.md   # smoke run (seconds; numbers meaningless)

Sections are per device (`sampler-cpu`, `train-cuda`, ...), so a CPU run never touches the GPU
rows and the other way round. Every CPU row is a ratio of two runs alternated in this process
(medians), because the machines are shared and absolute times drift; GPU rows add absolute times
and peak memory. Not a test: CI does not run it (tests/test_benchmarks.py runs --quick).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Compile rows report the first (compiling) run: make it a cold compile, not a cache hit of
# whatever ran before, so the time a user pays once is what the table says.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch  # noqa: E402

import bench_if  # noqa: E402
import bench_sampler  # noqa: E402
import bench_samplers  # noqa: E402
import bench_train  # noqa: E402
from report import DOC, environment, stamp, update_section  # noqa: E402

H100_BF16_TFLOPS = 800.0  # the figure for dense bf16 on an H100; --peak-tflops to change it


def train_table(results: list[dict], gpu: bool) -> str:
    head = ("| run | ours: params, train GFLOP/img | diffusers: widths, params, train GFLOP/img | ours img/s | "
            "diffusers img/s | ratio | ratio per FLOP | warm-up s (ours / theirs) | batch assembly ms (% of step)"
            + (" | MFU (ours) |" if gpu else " |"))
    lines = [head, "|" + "---|" * (10 if gpu else 9)]
    for r in results:
        o, d = r["ours"], r["diffusers"]
        name = f"{r['dtype']}{' autocast' if r['dtype'] == 'bf16' else ''}, {'torch.compile' if r['compile'] else 'eager'}"
        row = (f"| {name} | {o['params_M']:.2f} M, {o['train_GFLOP_per_img']:.2f} | "
               f"{'/'.join(map(str, d['channels']))}, {d['params_M']:.2f} M, {d['train_GFLOP_per_img']:.2f} | "
               f"{o['img_per_s']:.1f} | {d['img_per_s']:.1f} | **{r['speedup']:.2f}x** | {r['speedup_per_flop']:.2f}x | "
               f"{o['warmup_s']:.0f} / {d['warmup_s']:.0f} | {r['data_ms_per_batch']:.2f} "
               f"({100 * r['data_ms_per_batch'] / r['step_ms']:.1f}%) |")
        if gpu:
            row += f" {100 * r['mfu']:.1f}% |" if "mfu" in r else " |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--only", default="sampler,samplers,train,if",
                    help="comma-separated subset of sampler,samplers,train,if")
    ap.add_argument("--rounds", type=int, default=5, help="alternated A/B rounds per row (medians)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: the least noisy on shared machines)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS, help="GPU peak for the MFU column")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 round, no compile")
    ap.add_argument("--doc", type=Path, default=DOC, help="markdown file to update (default docs/benchmarks.md)")
    a = ap.parse_args(argv)
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    unknown = only - {"sampler", "samplers", "train", "if"}
    if unknown:
        ap.error(f"--only: unknown {', '.join(sorted(unknown))} (use sampler, samplers, train, if)")
    if a.quick and a.doc == DOC:
        ap.error("--quick numbers mean nothing: give it a --doc of its own, not docs/benchmarks.md")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to torch")
    torch.set_num_threads(a.threads)
    gpu = a.device == "cuda"
    rounds = 1 if a.quick else a.rounds
    dev = a.device
    t_start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)  # noqa: E731

    update_section(f"env-{dev}", environment(dev), a.doc)
    when = stamp(argv)

    if "sampler" in only:
        log("sampler: tiny IF, then the emoji model")
        desc, table = bench_sampler.run(dev, None, rounds, size=16 if a.quick else 64,
                                        emoji_stride=100 if a.quick else 20,
                                        compile=not (a.quick or a.no_compile))
        update_section(f"sampler-{dev}", f"{when}\n\n{desc}\n\n{table}", a.doc)
        print(table, flush=True)

    if "samplers" in only:
        log("samplers: every sampler on the emoji model, then process times of the CLI")
        d1, t1 = bench_samplers.sampler_rows(dev, rounds, quick=a.quick)
        d2, t2 = bench_samplers.process_rows(rounds, a.threads, quick=a.quick)
        update_section(f"samplers-{dev}", f"{when}\n\n{d1}\n\n{t1}\n\n{d2}\n\n{t2}", a.doc)
        print(t1, t2, sep="\n\n", flush=True)

    if "train" in only:
        preset = "tiny" if a.quick else ("gpu" if gpu else "cpu")
        batch = 4 if a.quick else (128 if gpu else 32)
        steps = 1 if a.quick else 3
        configs = [("fp32", False), ("bf16", False)]
        if not (a.quick or a.no_compile):
            configs += [("fp32", True), ("bf16", True)]
        results = []
        for dtype, comp in configs:
            log(f"trainer: {preset} preset, {dtype}, {'compile' if comp else 'eager'}")
            results.append(bench_train.compare(preset, dev, dtype, comp, False, batch, steps,
                                               rounds, a.peak_tflops if gpu else None,
                                               log=lambda m: log("  " + m)))
        r0 = results[0]
        layout = ("'s layout without the pixel-unshuffle stem and pooled caption, which diffusers lacks (the "
                  "4.9 M 32/64/128 net it had before issue 10)" if bench_train.COMPARABLE.get(preset) else "")
        desc = (f"`{preset}` preset{layout} ({r0['image_size']} px), batch {batch}, {rounds} alternated rounds of "
                f"{steps} optimizer steps after 2 warm-up steps (which include compiling), medians"
                + (f"; MFU = our img/s x train FLOP/img / {a.peak_tflops:g} TFLOP/s" if gpu else "") + ".")
        table = train_table(results, gpu)
        update_section(f"train-{dev}", f"{when}\n\n{desc}\n\n{table}", a.doc)
        print(table, flush=True)

    if "if" in only:
        if gpu or a.quick:
            log("IF-I-XL / IF-II-L, random weights" + (" (tiny configs: --quick)" if a.quick else ""))
            res = bench_if.main((["--tiny"] if a.quick else []) + ["--device", dev, "--rounds", str(rounds)]
                                + (["--steps", "2"] if a.quick else ["--compile"]))
            table = bench_if.table(res)
            update_section(f"if-{dev}", f"{when}\n\n{table}", a.doc)
            print(table, flush=True)
        else:
            log("IF-I-XL / IF-II-L: skipped on CPU (4.3 B parameters; run with --device cuda)")
    log(f"done: {a.doc}")


if __name__ == "__main__":
    main()
