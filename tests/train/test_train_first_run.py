"""Issue 13 on the emoji side: dfedit-train's defaults, help, loss curve, eval and export, and
dfedit's messages and defaults for emoji models (tiny run, tiny text encoder, no downloads)."""

import json
import os
import re
import stat

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dfedit.cli import app as dfedit_app
from dfedit.outputs import read_metadata
from dfedit.emoji import checkpoint
from dfedit_train.cli import app as train_app

runner = CliRunner()


def train(*args):
    return runner.invoke(train_app, [str(a) for a in args])


def dfedit(*args):
    return runner.invoke(dfedit_app, [str(a) for a in args] + ["--quiet"])


def one_line(r, prefix="dfedit: error: "):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in r.output, r.stderr
    return lines[0]


def files(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


RESUMED: dict = {}  # run_dir's resume output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, npm_tarball, tiny_encoder):
    """Two epochs, stopped after the first and resumed: a run with a history."""
    out = tmp_path_factory.mktemp("emoji") / "run"
    common = ["emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder,
              "--max-length", "12", "--out", out, "--quiet", "--sample-every", "0"]
    r = train(*common, "--epochs", "1")
    assert r.exit_code == 0, r.output
    r = train(*common, "--epochs", "2")
    assert r.exit_code == 0, r.output
    RESUMED["stderr"] = r.stderr
    return out


def _steps(run):
    return json.loads((run / "latest.json").read_text())["step"]


# ---- dfedit-train --------------------------------------------------------------------------------

def test_resume_message_counts_epochs_like_the_bar(run_dir):
    spe = _steps(run_dir) // 2
    assert f"resuming {run_dir} from checkpoints/step-{spe:08d} (step {spe} of {2 * spe}, 1 of 2 epochs done, " \
        "continuing in epoch 2)" in RESUMED["stderr"]


def test_loss_curve_is_written_from_the_log(run_dir):
    p = run_dir / "loss.png"
    meta = read_metadata(p)
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert meta["epochs_logged"] == len(log) == 2 and meta["last_step"] == log[-1]["step"]
    assert meta["plotted_with"].startswith("matplotlib ")
    with Image.open(p) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape == (360, 640, 3)
    blue = (a[..., 2] > 150) & (a[..., 0] < 100)  # the loss line is drawn (tab:blue)
    assert blue.sum() > 50


def test_loss_curve_skips_a_torn_log_line(tmp_path):
    from dfedit_train.plot import loss_curve
    (tmp_path / "log.jsonl").write_text('{"epoch": 1, "step": 5, "loss": 0.5, "lr": 0.001}\n'
                                        '{"epoch": 2, "step": 10, "loss": 0.4, "lr": 0.0005}\n{"epoch": 3, "st')
    assert read_metadata(loss_curve(tmp_path))["epochs_logged"] == 2
    assert loss_curve(tmp_path / "empty") is None


def test_saved_files_have_ordinary_modes(run_dir, tmp_path, dfedit_cache):
    """safetensors writes 0600; checkpoints, exports and caches are ordinary 0644 files like the rest."""
    mask = os.umask(0)
    os.umask(mask)
    want = 0o666 & ~mask
    dest = tmp_path / "exported"
    assert train("export", run_dir, dest).exit_code == 0
    found = list(run_dir.rglob("*.safetensors")) + list(dest.rglob("*.safetensors")) + \
        list((dfedit_cache / "text").rglob("*.safetensors"))
    assert len(found) >= 5
    for f in found:
        assert stat.S_IMODE(f.stat().st_mode) == want, f


def test_preset_defaults_to_cpu_without_a_gpu_and_gpu_with_one(tmp_path, monkeypatch, npm_tarball, tiny_encoder):
    import torch

    from dfedit_train import train as trainmod
    seen = {}

    def fake_train(out, mc, dc, tc, dac, **kw):
        seen.update(size=mc.image_size, epochs=tc.epochs, objective=dc.prediction_type)
        return {"step": 0, "skipped": 0, "images_per_s": None}

    monkeypatch.setattr(trainmod, "train", fake_train)
    r = train("emoji", "--data", npm_tarball, "--text-encoder", tiny_encoder, "--out", tmp_path / "a", "--quiet")
    assert r.exit_code == 0, r.output
    assert seen == {"size": 32, "epochs": 40, "objective": "v_prediction"}
    assert "note: --preset cpu (32 px), as no CUDA GPU is present" in r.stderr
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    r = train("emoji", "--data", npm_tarball, "--text-encoder", tiny_encoder, "--out", tmp_path / "b", "--quiet")
    assert r.exit_code == 0 and seen["size"] == 64 and "--preset gpu (64 px)" in r.stderr
    r = train("emoji", "--preset", "tiny", "--data", npm_tarball, "--out", tmp_path / "c", "--quiet")
    assert seen["size"] == 16 and "note: --preset" not in r.stderr


def test_emoji_help_shows_every_default():
    r = runner.invoke(train_app, ["emoji", "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.stdout).split())
    assert "eps (default)" not in text
    assert "eps, v, x0, or flow (flow matching: velocity target, its own noise schedule) (default: the preset's: " \
           "tiny eps, cpu v, gpu eps)" in text
    assert "default: the preset's: tiny 2, cpu 40, gpu 500" in text
    import typer
    cmd = typer.main.get_command(train_app).commands["emoji"]
    missing = []
    for p in cmd.params:
        names = list(p.opts) + list(getattr(p, "secondary_opts", []))
        if p.hidden or (getattr(p, "is_flag", False) and not getattr(p, "secondary_opts", None)):
            continue  # plain flags (--cpu, --quiet, --restart, --base-only): off unless given
        name = names[-1]
        seg = text.split(" " + name + " ", 1)[1]
        nxt = re.search(r" --[a-z]", seg)
        seg = seg[:nxt.start()] if nxt else seg
        if "default" not in seg:
            missing.append(name)
    assert not missing, missing


def test_eval_of_the_builtin_model_never_writes_into_the_package(run_dir, tmp_path, monkeypatch):
    shipped = tmp_path / "package" / "weights" / "emoji"
    assert train("export", run_dir, shipped).exit_code == 0
    monkeypatch.setitem(checkpoint.BUILTIN, "emoji", shipped)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DFEDIT_CACHE", str(cache))
    before = files(shipped)
    r = train("eval", "emoji", "--n-samples", "2", "--stride", "250", "--max-images", "8", "--no-recognise")
    assert r.exit_code == 0, r.output
    assert files(shipped) == before  # nothing written into the installed model
    report = cache / "eval" / "builtin-emoji"
    assert (report / "eval.json").is_file() and (report / "samples.png").is_file()
    assert "evaluating" in r.stderr and f"into {report}" in r.stderr
    assert "loss per noise band" in r.stderr and "sampling" in r.stderr  # progress, not minutes of silence


@pytest.mark.parametrize("args,fragment", [
    (["--n-samples", "0"], "--n-samples"), (["--guidance", "nan"], "--guidance"), (["--stride", "0"], "--stride"),
    (["--seed", str(2**64)], "--seed"), (["--device", "mps"], "--device mps"), (["--max-images", "0"], "--max-images"),
])
def test_eval_bad_options_are_one_line(run_dir, args, fragment):
    before = files(run_dir)
    assert fragment in one_line(train("eval", run_dir, *args, "--no-recognise"), "dfedit-train: error: ")
    assert files(run_dir) == before


# ---- dfedit on an emoji model ----------------------------------------------------------------------

@pytest.fixture
def src(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    p = tmp_path / "in.png"
    Image.fromarray(a).save(p)
    return p


@pytest.fixture
def no_weights(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("emoji weights loaded before the input was checked")
    from dfedit.emoji import checkpoint as emoji_checkpoint
    monkeypatch.setattr(emoji_checkpoint, "load_tensors", boom)


def test_checkpoints_folder_names_the_run(run_dir, tmp_path, no_weights):
    line = one_line(dfedit("sample", "x", "--model", run_dir / "checkpoints", "-o", tmp_path / "o.png"))
    assert f"pass the run directory {run_dir}" in line and "step-" in line
    assert not (tmp_path / "o.png").exists()


def test_upscale_on_an_emoji_model_does_not_say_use_emoji(run_dir, tmp_path, src, no_weights):
    for args in (["sample", "x", "--model", run_dir, "--upscale"], ["upscale", src, "--model", run_dir]):
        line = one_line(dfedit(*args, "-o", tmp_path / "o.png"))
        assert "use --model emoji" not in line and "no stage II of their own" in line
    line = one_line(dfedit("sample", "x", "--model", run_dir, "--stage2", run_dir, "--upscale",
                           "-o", tmp_path / "o.png"))
    assert "emoji models are stage I models" in line
    assert not (tmp_path / "o.png").exists()


def test_prompt_beyond_the_caption_limit_is_refused(run_dir, tmp_path, src, no_weights):
    long = "grinning face with big eyes and a tongue sticking out of its wide open mouth"
    for args in (["sample", long], ["sdedit", src, "--prompt", long], ["embed", long]):
        line = one_line(dfedit(*args, "--model", run_dir, *(["-o", tmp_path / "o.png"] if args[0] != "embed" else [])))
        assert "reads at most 12" in line and "emoji model" in line
    assert not (tmp_path / "o.png").exists()


def test_edits_default_to_the_unconditional_prompt_on_emoji_models(run_dir, tmp_path, src):
    mask = tmp_path / "m.png"
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(mask)
    for cmd in (["sdedit", src, "--i-start", "6"], ["inpaint", src, "--mask", mask], ["denoise", src, "--t", "500"]):
        out = tmp_path / f"{cmd[0]}.png"
        r = dfedit(*cmd, "--model", run_dir, "--stride", "100", "-o", out)
        assert r.exit_code == 0, r.stderr
        assert read_metadata(out)["prompt"] == "", cmd


def test_cache_dir_reaches_the_emoji_caption_cache(run_dir, tmp_path):
    cache = tmp_path / "mycache"
    r = dfedit("sample", "rocket", "--model", run_dir, "--stride", "250", "--cache-dir", cache, "-o", tmp_path / "o.png")
    assert r.exit_code == 0, r.stderr
    assert list((cache / "text").rglob("*.safetensors"))


def test_accelerate_cpu_single_process_without_a_readable_launcher_is_one_line(tmp_path, monkeypatch):
    """`accelerate launch --cpu --num_processes N` leaves MASTER_ADDR and no WORLD_SIZE; when the
    launcher's command line cannot be read, training alone would be a silent lie: say so."""
    from dfedit_train import launch
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(launch.os, "getppid", lambda: 2**22 + 12345)  # no such process
    line = one_line(train("emoji", "--preset", "tiny", "--out", tmp_path / "o"), "dfedit-train: error: ")
    assert "single process" in line and "torchrun --nproc_per_node" in line
    assert not (tmp_path / "o").exists()
    monkeypatch.delenv("MASTER_ADDR")  # a plain `accelerate launch --cpu` (one process asked for)
    assert launch.accelerate_cpu_processes() == 1
