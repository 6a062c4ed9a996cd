"""Messages that lead with the real cause (issue 23, item 6): one `dfedit: error:` line, exit 1,
before any weights load, nothing written."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def photo(tmp_path):
    p = tmp_path / "p.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(p)
    return p


@pytest.fixture
def refused(cli, tmp_path, monkeypatch):
    from dfedit.emoji import checkpoint

    def boom(*a, **k):
        raise AssertionError("weights loaded before the input was checked")

    monkeypatch.setattr(checkpoint, "load_denoiser", boom)
    monkeypatch.chdir(tmp_path)

    def run(*args):
        before = sorted(p.name for p in tmp_path.iterdir())
        code, out, err = cli(*args, "--quiet")
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("dfedit: error: "), err
        assert "Traceback" not in out + err
        assert sorted(p.name for p in tmp_path.iterdir()) == before
        return lines[0][len("dfedit: error: "):]

    return run


def test_upscale_on_the_emoji_model_leads_with_its_missing_stage2(refused, photo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = refused("upscale", photo, "--model", "emoji")
    assert msg.startswith("--model emoji has no stage II: emoji models have no stage II of their own"), msg
    assert msg.index("no stage II") < msg.find("Hub cache")  # the Hub is mentioned after, if at all


def test_a_missing_mask_is_called_a_mask(refused, photo, tmp_path):
    msg = refused("inpaint", photo, "--mask", tmp_path / "nope.png", "--model", "emoji")
    assert msg == f"mask {tmp_path / 'nope.png'} does not exist"


def test_a_missing_input_image_is_still_called_an_input_image(refused, tmp_path):
    msg = refused("inpaint", tmp_path / "gone.png", "--mask", tmp_path / "gone.png", "--model", "emoji")
    assert msg.startswith("input image ")


@pytest.mark.parametrize("flag,suffix", [("--out", ".png"), ("--trajectory", ".gif")])
def test_an_empty_output_name_is_refused_as_empty(refused, flag, suffix):
    msg = refused("sample", "fire", "--model", "emoji", flag, "")
    assert msg == f"{flag} is empty: give a file name ending in {suffix}"


def test_an_empty_out_on_a_diagnostic_command(refused, photo):
    assert refused("noise", photo, "--model", "emoji", "--out", "").startswith("--out is empty")
