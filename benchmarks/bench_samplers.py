"""Samplers on the shipped emoji model, and how long the command line takes (issue 12).

  (f) every sampler against DDPM at the default stride (30: 34 model calls) on `--model emoji`:
      `DFEdit.sample` with the model loaded and the prompt cached, same prompt, seed and guidance;
      alternated rounds in this process, medians. The recognisability column is dfedit-train's
      metric (top-5 ratio, training captions) as the shipped model's record.json holds it: measured
      for the sampler the model was evaluated with, not here (`dfedit-train recognise emoji
      --sampler S --steps N` measures any other).
  (g) process time, start to PNG, of `dfedit sample --model emoji` (prompt cached; the first,
      untimed run fills the cache) at 20 DPM-Solver++ steps and at the DDPM default, and of
      `dfedit --help`, each alternated with a reference process: `python -c "import torch"` (the
      floor of any program that runs a torch model) and `python -c pass` (the interpreter alone).

    python benchmarks/run.py --only samplers      # how the docs table is made
    python benchmarks/bench_samplers.py           # the same, printed only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sampler import alternate  # noqa: E402

PROMPT, SEED = "grinning face", 0
# (label, sampler, stride, steps): the reference first
RUNS = [("ddpm, stride 30 (default)", "ddpm", None, None), ("dpmpp-2m, --steps 20", "dpmpp-2m", None, 20),
        ("dpmpp-2m, --steps 10", "dpmpp-2m", None, 10), ("ddim, stride 30", "ddim", None, None),
        ("euler, --steps 20", "euler", None, 20), ("heun, --steps 20", "heun", None, 20)]


def sampler_rows(device: str, rounds: int, quick: bool = False) -> tuple[str, str]:
    from dfedit import DFEdit
    from dfedit.sampler import plan_timesteps
    from dfedit.samplers import SAMPLERS

    df = DFEdit(model="emoji", device=device, quiet=True)
    den = df.stage1()
    runs = RUNS[:2] if quick else RUNS
    fns = {label: (lambda s=sampler, st=stride, n=steps: df.sample(PROMPT, seed=SEED, sampler=s, stride=st, steps=n))
           for label, sampler, stride, steps in runs}
    m = alternate(fns, rounds, torch.device(device))
    ref = m[runs[0][0]]
    rec = recorded_recognisability()
    lines = ["| sampler (`dfedit sample \"grinning face\" --model emoji`) | model calls | time (s) | "
             "time / DDPM default | top-5 ratio, training captions (record.json) |", "|---|---|---|---|---|"]
    for label, sampler, stride, steps in runs:
        calls = SAMPLERS[sampler].model_calls(plan_timesteps(den.schedule, sampler, stride, steps))
        r = rec.get((sampler, stride or (30 if sampler in ("ddpm", "ddim") else None), steps), "not in the record")
        lines.append(f"| {label} | {calls} | {m[label]:.3f} | **{m[label] / ref:.2f}** | {r} |")
    desc = (f"the shipped emoji model ({den.sample_size} px, cfg {den.default_cfg:g}, one image), model loaded and "
            f"prompt cached; {rounds} alternated rounds after a warm-up, medians.")
    return desc, "\n".join(lines)


def recorded_recognisability() -> dict:
    """{(sampler, stride, steps): 'ratio'} from the shipped model's record.json (dfedit-train eval)."""
    import json

    from dfedit.constants import BUILTIN_MODELS

    try:
        r = json.loads((BUILTIN_MODELS["emoji"] / "record.json").read_text())["eval"]["recognise"]
        return {(r["sampler"], r["stride"], r["steps"]): f"{r['rows']['train']['ratio_top5']:.3f}"}
    except (OSError, KeyError, ValueError):
        return {}


def _time_process(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    return dt


def process_rows(rounds: int, threads: int, steps: int = 20, quick: bool = False) -> tuple[str, str]:
    py = sys.executable
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = Path(tempfile.mkdtemp()) / "bench.png"
    dfedit = [py, "-m", "dfedit.cli"]
    cases = [
        ("`dfedit --help`", dfedit + ["--help"], "`python -c pass`", [py, "-c", "pass"], "≤ 0.5 s"),
        (f"`dfedit sample --model emoji --sampler dpmpp-2m --steps {steps}`",
         dfedit + ["sample", PROMPT, "--model", "emoji", "--sampler", "dpmpp-2m", "--steps", str(steps),
                   "-o", str(out), "--quiet"],
         '`python -c "import torch"`', [py, "-c", "import torch"], "≤ 2 s"),
        ("`dfedit sample --model emoji` (DDPM, stride 30)",
         dfedit + ["sample", PROMPT, "--model", "emoji", "-o", str(out), "--quiet"],
         '`python -c "import torch"`', [py, "-c", "import torch"], ""),
    ][:1 if quick else None]
    lines = ["| process (start to exit) | median (s) | reference process | median (s) | ratio | target |",
             "|---|---|---|---|---|---|"]
    for name, cmd, ref_name, ref_cmd, target in cases:
        _time_process(cmd, env)  # warm-up: fills the prompt cache and the OS file cache
        _time_process(ref_cmd, env)
        a, b = [], []
        for r in range(rounds):
            pair = [(cmd, a), (ref_cmd, b)] if r % 2 == 0 else [(ref_cmd, b), (cmd, a)]
            for c, acc in pair:
                acc.append(_time_process(c, env))
        ma, mb = statistics.median(a), statistics.median(b)
        lines.append(f"| {name} | {ma:.2f} | {ref_name} | {mb:.2f} | **{ma / mb:.2f}** | {target} |")
    desc = (f"{rounds} alternated rounds after a warm-up run of each, medians; OMP_NUM_THREADS={threads}; "
            f"wall-clock time of the whole process, as a user waits for it.")
    return desc, "\n".join(lines)


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    for desc, tab in (sampler_rows(a.device, a.rounds), process_rows(a.rounds, a.threads)):
        print(desc)
        print(tab)


if __name__ == "__main__":
    main()
