"""Issue-4 invariants through the real CLI on the tiny IF checkpoints (16 px -> 32 px)."""


import numpy as np
import pytest
from PIL import Image

from dfedit.outputs import read_metadata
from helpers import ok, pixels

FAST = ["--device", "cpu", "--quiet"]


@pytest.fixture
def m(tiny_models):
    s1, s2 = tiny_models
    return ["--model", s1, "--stage2", s2, *FAST]


@pytest.fixture
def photo(tmp_path):
    def make(size, name="photo.png"):
        rng = np.random.default_rng(size)
        a = np.zeros((size, size, 3), np.uint8)
        a[..., 0] = np.linspace(0, 255, size, dtype=np.uint8)
        a[..., 1] = np.linspace(0, 255, size, dtype=np.uint8)[:, None]
        a[..., 2] = rng.integers(0, 256, (size, size))
        p = tmp_path / name
        Image.fromarray(a).save(p)
        return p
    return make


@pytest.fixture
def mask(tmp_path):
    """A 100x100 mask (any size works): a white square in the middle = regenerate."""
    a = np.zeros((100, 100), np.uint8)
    a[25:75, 30:80] = 255
    p = tmp_path / "mask.png"
    Image.fromarray(a).save(p)
    return p


def _mask_at(path, size):
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127


@pytest.mark.parametrize("upscale", ["--no-upscale", "--upscale"])
def test_hybrid_of_one_prompt_equals_sample(cli, m, tmp_path, upscale):
    ok(cli("sample", "a skull", *m, upscale, "--seed", "7", "--stride", "90", "-o", tmp_path / "s.png"))
    ok(cli("hybrid", "a skull", "a skull", *m, upscale, "--seed", "7", "--stride", "90", "-o", tmp_path / "h.png"))
    s, h = pixels(tmp_path / "s.png"), pixels(tmp_path / "h.png")
    assert s.shape == h.shape
    assert np.abs(s - h).max() <= 1  # low + high of one estimate is the identity (up to rounding)
    ok(cli("hybrid", "a skull", "a forest", *m, upscale, "--seed", "7", "--stride", "90", "-o", tmp_path / "x.png"))
    assert np.abs(s - pixels(tmp_path / "x.png")).max() > 10  # two prompts do make a different image
    meta = read_metadata(tmp_path / "x.png")
    assert meta["command"] == "hybrid" and meta["prompts"] == ["a skull", "a forest"] and meta["seed"] == 7


@pytest.mark.parametrize("upscale,size", [("--no-upscale", 16), ("--upscale", 32)])
@pytest.mark.parametrize("jumps", [[], ["--jump-length", "3", "--jump-n-sample", "2"]])
def test_inpainting_keeps_pixels_outside_the_mask(cli, m, tmp_path, photo, mask, upscale, size, jumps):
    """The input is at the output size, so outside the mask the output must equal it exactly."""
    src = photo(size)
    ok(cli("inpaint", src, "--mask", mask, *m, upscale, "--stride", "90", *jumps, "-o", tmp_path / "i.png"))
    out, inp, hole = pixels(tmp_path / "i.png"), pixels(src), _mask_at(mask, size)
    assert out.shape == inp.shape
    assert np.array_equal(out[~hole], inp[~hole])
    assert np.abs(out[hole] - inp[hole]).mean() > 5  # the hole was regenerated
    ok(cli("inpaint", src, "--mask", mask, "--invert-mask", *m, upscale, "--stride", "90", "-o", tmp_path / "j.png"))
    inv = pixels(tmp_path / "j.png")
    assert np.array_equal(inv[hole], inp[hole]) and not np.array_equal(inv[~hole], inp[~hole])


def test_sdedit_at_the_last_index_returns_the_input(cli, m, tmp_path, photo):
    src = photo(16)
    ok(cli("sdedit", src, "--i-start", "33", *m, "--no-upscale", "-o", tmp_path / "last.png"))
    ok(cli("sdedit", src, "--i-start", "1", *m, "--no-upscale", "-o", tmp_path / "first.png"))
    inp = pixels(src)
    # within the last step's noise (sqrt(1 - abar_0) ~ 0.006 of the [-1, 1] range, times the estimate)
    assert np.abs(pixels(tmp_path / "last.png") - inp).max() <= 16
    assert np.abs(pixels(tmp_path / "first.png") - inp).mean() > 20  # from t=960 the input is mostly gone
    meta = read_metadata(tmp_path / "last.png")
    assert meta["command"] == "sdedit" and meta["i_start"] == [33] and meta["prompt"] == "a high quality photo"


def test_sdedit_sweep_grid_and_repeat(cli, m, tmp_path, photo):
    src = photo(40)
    ok(cli("sdedit", src, "--i-start", "1", "--i-start", "10", "--i-start", "20", *m, "--no-upscale",
            "-o", tmp_path / "sweep.png"))
    g = pixels(tmp_path / "sweep.png")
    tile, label_h, pad = 128, 14, 2
    assert g.shape == (3 * (tile + label_h) + 4 * pad, 2 * tile + 3 * pad, 3)  # original | result per row
    ok(cli("sdedit", src, "--i-start", "20", "--repeat", "2", *m, "--no-upscale", "-o", tmp_path / "r2.png"))
    ok(cli("sdedit", src, "--i-start", "20", *m, "--no-upscale", "-o", tmp_path / "r1.png"))
    assert not np.array_equal(pixels(tmp_path / "r1.png"), pixels(tmp_path / "r2.png"))


@pytest.mark.parametrize("upscale", ["--no-upscale", "--upscale"])
def test_anagram_shows_every_view_and_is_deterministic(cli, m, tmp_path, upscale):
    args = ["anagram", "an old man", "a campfire", "a dog", "--view", "flip", "--view", "negate", *m, upscale,
            "--stride", "90", "-n", "2"]
    ok(cli(*args, "-o", tmp_path / "a.png", "--trajectory", tmp_path / "a.gif"))
    ok(cli(*args, "-o", tmp_path / "b.png"))
    a = pixels(tmp_path / "a.png")
    assert np.array_equal(a, pixels(tmp_path / "b.png"))
    tile = 128
    assert a.shape == (2 * (tile + 14) + 3 * 2, 3 * tile + 4 * 2, 3)  # 2 samples x 3 views
    # column 1 is column 0 upside down (the flip view of the same image)
    size = 32 if upscale == "--upscale" else 16
    step = tile // size
    t0 = a[2:2 + tile:step, 2:2 + tile:step]
    t1 = a[2:2 + tile:step, 4 + tile:4 + 2 * tile:step]
    assert np.array_equal(t1, t0[::-1])
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames >= 4  # 12 steps, a frame every 3 (PIL merges the held final frames)
    assert read_metadata(tmp_path / "a.png")["views"] == ["identity", "flip", "negate"]


@pytest.mark.parametrize("view", ["rotate_cw", "rotate_ccw", "rotate_180", "skew", "patch_permute",
                                  "pixel_permute", "jigsaw", "inner_circle", "square_hinge"])
def test_anagram_runs_with_every_view(cli, m, tmp_path, view):
    """Each view: the second column of the sheet is exactly the view of the first (every view is a
    pixel permutation, so 8-bit pixels map exactly), the metadata names it, and the image under the
    view differs from the image itself (a view that did nothing would pass the first check)."""
    import torch

    from dfedit.views import make_view
    ok(cli("anagram", "a dog", "a cat", "--view", view, *m, "--no-upscale", "--stride", "330",
            "-o", tmp_path / "v.png"))
    a = pixels(tmp_path / "v.png")
    tile, size = 128, 16
    assert a.shape == (tile + 14 + 2 * 2, 2 * tile + 3 * 2, 3)  # 1 sample x (identity, view)
    step = tile // size
    t0 = a[2:2 + tile:step, 2:2 + tile:step]
    t1 = a[2:2 + tile:step, 4 + tile:4 + 2 * tile:step]
    x = torch.from_numpy(t0.astype(np.float32)).permute(2, 0, 1)[None]
    want = make_view(view, size, 0).apply(x)[0].permute(1, 2, 0).numpy().astype(int)
    assert np.array_equal(t1, want)
    assert not np.array_equal(t1, t0)
    meta = read_metadata(tmp_path / "v.png")
    assert meta["views"] == ["identity", view] and meta["prompts"] == ["a dog", "a cat"]


@pytest.mark.parametrize("view", ["pixel_permute", "inner_circle", "square_hinge"])
def test_an_anagram_through_stage_two_shows_the_lifted_view(cli, m, tmp_path, view):
    """With stage II (16 -> 32 px) the sheet's second column is the stage II view, which follows
    stage I's (dfedit.views.make_view lifts it), of the stage II image."""
    import torch

    from dfedit.views import make_view
    ok(cli("anagram", "a dog", "a cat", "--view", view, *m, "--upscale", "--stride", "330", "--stage2-steps", "2",
           "-o", tmp_path / "v.png"))
    a = pixels(tmp_path / "v.png")
    tile, size = 128, 32
    step = tile // size
    t0 = a[2:2 + tile:step, 2:2 + tile:step]
    t1 = a[2:2 + tile:step, 4 + tile:4 + 2 * tile:step]
    x = torch.from_numpy(t0.astype(np.float32)).permute(2, 0, 1)[None]
    want = make_view(view, size, 0, base=16).apply(x)[0].permute(1, 2, 0).numpy().astype(int)
    assert np.array_equal(t1, want) and not np.array_equal(t1, t0)


def test_every_generating_command_writes_a_trajectory(cli, m, tmp_path, photo, mask):
    src = photo(16)
    for cmd in (["sample", "a dog"], ["sdedit", src], ["inpaint", src, "--mask", mask],
                ["hybrid", "a dog", "a cat"], ["anagram", "a dog", "a cat"]):
        gif = tmp_path / f"{cmd[0]}.gif"
        ok(cli(*cmd, *m, "--no-upscale", "--stride", "90", "-o", tmp_path / f"{cmd[0]}.png", "--trajectory", gif))
        with Image.open(gif) as g:
            assert g.n_frames >= 3, cmd
    s1 = m[m.index("--model") + 1]
    s2 = m[m.index("--stage2") + 1]
    for cmd in (["noise", src, "--model", s1], ["denoise", src, "--model", s1, "--t", "300", "--device", "cpu"],
                ["upscale", src, "--model", s1, "--stage2", s2, "--stage2-steps", "10", "--device", "cpu"]):
        gif = tmp_path / f"{cmd[0]}.gif"
        ok(cli(*cmd, "--quiet", "-o", tmp_path / f"{cmd[0]}.png", "--trajectory", gif))
        with Image.open(gif) as g:
            assert g.n_frames >= 3, cmd


def _bad(cli, tmp_path, *args):
    before = set(tmp_path.rglob("*"))
    code, out, err = cli(*args, "-o", tmp_path / "o.png")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfedit: error: "), err
    assert "Traceback" not in out + err
    assert set(tmp_path.rglob("*")) == before  # no output, no temp file
    return lines[0]


def test_edit_bad_inputs(cli, m, tmp_path, photo, monkeypatch):
    src = photo(16)
    import diffusers

    def boom(*a, **k):
        raise AssertionError("weights loaded before the input was checked")

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", boom)
    notimg = tmp_path / "notimg.png"
    notimg.write_text("nope")
    assert "does not exist" in _bad(cli, tmp_path, "inpaint", src, "--mask", tmp_path / "none.png", *m)
    assert "not an image" in _bad(cli, tmp_path, "inpaint", src, "--mask", notimg, *m)
    assert "--view 'mirror' is unknown" in _bad(cli, tmp_path, "anagram", "a", "b", "--view", "mirror", *m)
    assert "need 3 prompts" in _bad(cli, tmp_path, "anagram", "a", "b", "--view", "flip", "--view", "negate", *m)
    assert "--i-start must be between 0 and 33" in _bad(cli, tmp_path, "sdedit", src, "--i-start", "34", *m)
    assert "--i-start" in _bad(cli, tmp_path, "sdedit", src, "--i-start", "-1", *m)
    assert "two or three prompts" in _bad(cli, tmp_path, "hybrid", "a", "b", "c", "d", *m)
    assert "exactly two prompts" in _bad(cli, tmp_path, "hybrid", "a", "b", "c", "--split", "color", *m)
    assert "--split 'wavelet' is unknown" in _bad(cli, tmp_path, "hybrid", "a", "b", "--split", "wavelet", *m)
    assert ".gif" in _bad(cli, tmp_path, "sample", "a", "--trajectory", tmp_path / "t.png", *m)


@pytest.mark.parametrize("split", ["motion_blur", "scaling"])
def test_the_new_factorizations_run_through_both_stages_and_are_recorded(cli, m, tmp_path, split):
    ok(cli("hybrid", "a dog", "a cat", "--split", split, *m, "--upscale", "--stride", "330", "--stage2-steps", "2",
           "-o", tmp_path / "h.png"))
    meta = read_metadata(tmp_path / "h.png")
    assert meta["split"] == split and meta["stage2_steps"] == 2
