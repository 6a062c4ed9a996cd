"""What a newcomer meets (issue 13) on the tiny IF checkpoints (16 px -> 32 px): outputs a person
can see, a discoverable built-in model, and every bad input refused up front.

Bad input: exactly one `dfedit: error:` line, exit code 1, no traceback, no model weights loaded
(from_pretrained is patched to raise), no file left behind and every input file byte-for-byte
unchanged.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfedit import DFEdit
from dfedit.images import load_image, to_pil
from dfedit.outputs import grid, read_metadata
from helpers import ok, pixels

FAST = ["--device", "cpu", "--quiet"]


class ModelLoaded(Exception):
    pass


def _forbid_weights(monkeypatch):
    import diffusers
    import transformers

    def boom(*a, **k):
        raise ModelLoaded("weights loaded before the input was checked")

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", boom)
    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", boom)


@pytest.fixture
def m(tiny_models):
    s1, s2 = tiny_models
    return ["--model", s1, "--stage2", s2]


@pytest.fixture
def photo(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    a[:, :12, 0] = 255
    p = tmp_path / "photo.png"
    Image.fromarray(a).save(p)
    return p


def _mask(tmp_path, fill=None, name="mask.png", size=64) -> Path:
    a = np.zeros((size, size), np.uint8)
    if fill is None:
        a[16:48, 16:48] = 255
    else:
        a[:] = fill
    p = tmp_path / name
    Image.fromarray(a).save(p)
    return p


def _files(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _refused(cli, tmp_path, monkeypatch, *args, fragment=None, cheap=True):
    """One error line, exit 1, nothing written, nothing changed, (cheap:) no weights loaded."""
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    if cheap:
        _forbid_weights(monkeypatch)
    code, out, err = cli(*[str(a) for a in args], "--quiet")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfedit: error: "), err
    assert "Traceback" not in out + err
    assert _files(tmp_path) == before  # no output, no temp file, every input unchanged
    if fragment:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---- bad input, refused before any model loads ------------------------------------------------------

LONG = " ".join(["zebra"] * 90)  # far beyond IF's 77 T5 tokens


def _link(tp, target, name):
    p = tp / name
    p.symlink_to(target)
    return p


BAD = [
    # never overwrite an input, however it is spelled
    ("sdedit-out-is-input", lambda s1, s2, ph, tp: ["sdedit", ph, "--model", s1, "-o", ph], "never overwrites"),
    ("sdedit-out-is-input-relative", lambda s1, s2, ph, tp: ["sdedit", ph, "--model", s1, "-o", "../" + tp.name
                                                            + "/photo.png"], "never overwrites"),
    ("sdedit-out-is-link-to-input", lambda s1, s2, ph, tp: ["sdedit", ph, "--model", s1, "-o",
                                                            _link(tp, ph, "link.png")], "never overwrites"),
    ("inpaint-out-is-mask", lambda s1, s2, ph, tp: ["inpaint", ph, "--mask", _mask(tp), "--model", s1,
                                                    "-o", tp / "mask.png"], "never overwrites"),
    ("noise-out-is-input", lambda s1, s2, ph, tp: ["noise", ph, "--model", s1, "-o", ph], "never overwrites"),
    ("denoise-out-is-input", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "-o", ph], "never overwrites"),
    ("upscale-out-is-input", lambda s1, s2, ph, tp: ["upscale", ph, "--model", s1, "--stage2", s2, "-o", ph],
     "never overwrites"),
    ("trajectory-is-input", lambda s1, s2, ph, tp: ["sdedit", _gif(tp), "--model", s1, "-o", tp / "o.png",
                                                    "--trajectory", tp / "in.gif"], "never overwrites"),
    ("display-copy-is-input", lambda s1, s2, ph, tp: ["sdedit", _copy(ph, tp / "x.display.png"), "--model", s1,
                                                      "-o", tp / "x.png"], "display copy"),
    # numbers that are not numbers
    ("cfg-nan", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--cfg", "nan"], "--cfg must be a finite"),
    ("cfg-inf", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--cfg", "inf"], "--cfg must be a finite"),
    ("cfg-minus-inf", lambda s1, s2, ph, tp: ["hybrid", "a", "b", "--model", s1, "--cfg", "-inf"], "--cfg"),
    ("stage2-cfg-nan", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--stage2-cfg", "nan"], "--stage2-cfg"),
    ("denoise-cfg-inf", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--cfg", "inf"], "--cfg"),
    ("upscale-stage2-cfg-inf", lambda s1, s2, ph, tp: ["upscale", ph, "--model", s1, "--stage2", s2,
                                                       "--stage2-cfg", "inf"], "--stage2-cfg"),
    ("eta-with-ddpm", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--eta", "0.5"], "--sampler ddim only"),
    ("eta-inf", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--sampler", "ddim", "--eta", "inf"], "--eta"),
    ("blur-sigma-nan", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--blur-sigma", "nan"], "--blur-sigma"),
    # blur kernels
    ("kernel-0", lambda s1, s2, ph, tp: ["hybrid", "a", "b", "--model", s1, "--kernel", "0"], "odd number"),
    ("kernel-even", lambda s1, s2, ph, tp: ["hybrid", "a", "b", "--model", s1, "--kernel", "8"], "odd number"),
    ("kernel-1", lambda s1, s2, ph, tp: ["hybrid", "a", "b", "--model", s1, "--kernel", "1"], "odd number"),
    ("kernel-vanishes-at-16px", lambda s1, s2, ph, tp: ["hybrid", "a", "b", "--model", s1, "--kernel", "5"],
     "blurs nothing"),
    ("kernel-too-large", lambda s1, s2, ph, tp: ["hybrid", "a", "b", "--model", s1, "--kernel", "129"], "too large"),
    ("sigma-0", lambda s1, s2, ph, tp: ["hybrid", "a", "b", "--model", s1, "--sigma", "0"], "--sigma"),
    ("kernel-with-color-split", lambda s1, s2, ph, tp: ["hybrid", "a", "b", "--model", s1, "--split", "color",
                                                        "--kernel", "33"], "--split color"),
    ("blur-kernel-even", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--blur-kernel", "4"], "--blur-kernel"),
    ("blur-kernel-too-large", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--blur-kernel", "33"],
     "too large for the model's 16 px"),
    # prompts the text encoder would cut
    ("prompt-too-long", lambda s1, s2, ph, tp: ["sample", LONG, "--model", s1], "reads at most 77"),
    ("negative-prompt-too-long", lambda s1, s2, ph, tp: ["sample", "a", "--negative-prompt", LONG, "--model", s1],
     "reads at most 77"),
    ("sdedit-prompt-too-long", lambda s1, s2, ph, tp: ["sdedit", ph, "--prompt", LONG, "--model", s1], "tokens"),
    ("anagram-prompt-too-long", lambda s1, s2, ph, tp: ["anagram", "a", LONG, "--model", s1], "tokens"),
    ("denoise-prompt-too-long", lambda s1, s2, ph, tp: ["denoise", ph, "--prompt", LONG, "--model", s1], "tokens"),
    ("embed-prompt-too-long", lambda s1, s2, ph, tp: ["embed", LONG, "--model", s1], "tokens"),
    # devices, offload, cache
    ("offload-on-cpu", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--offload", "--device", "cpu"],
     "--offload"),
    ("denoise-offload-on-cpu", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--offload", "--device", "cpu"],
     "--offload"),
    ("device-mps", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--device", "mps"], "--device mps"),
    ("device-cuda-7", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--device", "cuda:7"], "cuda"),
    ("device-meta", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--device", "meta"], "--device 'meta' is unknown"),
    ("embed-cache-dir-under-file", lambda s1, s2, ph, tp: ["embed", "a", "--model", s1, "--cache-dir", ph / "c"],
     "not a directory"),
    ("embed-cache-dir-is-file", lambda s1, s2, ph, tp: ["embed", "a", "--model", s1, "--cache-dir", ph],
     "--cache-dir"),
    # masks that mark nothing
    ("mask-all-black", lambda s1, s2, ph, tp: ["inpaint", ph, "--mask", _mask(tp, 0), "--model", s1, "--stage2", s2],
     "all black"),
    ("mask-all-white-inverted", lambda s1, s2, ph, tp: ["inpaint", ph, "--mask", _mask(tp, 255), "--invert-mask",
                                                        "--model", s1, "--no-upscale"], "all white"),
    ("mask-dot-vanishes", lambda s1, s2, ph, tp: ["inpaint", ph, "--mask", _dot(tp), "--model", s1, "--no-upscale"],
     "16 px"),
    # seeds and sizes
    ("seed-2-64", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--seed", str(2**64)], "--seed"),
    ("seed-negative", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--seed", "-1"], "--seed"),
    ("noise-seed-huge", lambda s1, s2, ph, tp: ["noise", ph, "--model", s1, "--seed", str(10**30)], "--seed"),
    ("denoise-seed-huge", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--seed", str(2**64)], "--seed"),
    ("upscale-seed-huge", lambda s1, s2, ph, tp: ["upscale", ph, "--model", s1, "--stage2", s2, "--seed",
                                                  str(2**64)], "--seed"),
    ("view-seed-huge", lambda s1, s2, ph, tp: ["anagram", "a", "b", "--model", s1, "--view-seed", str(2**65)],
     "--view-seed"),
    ("num-samples-huge", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "-n", "100000"], "at most"[:0] + "64"),
    ("num-samples-65", lambda s1, s2, ph, tp: ["hybrid", "a", "b", "--model", s1, "-n", "65"], "64"),
    # names
    ("trajectory-not-gif", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--trajectory", tp / "t.png"],
     "--trajectory"),
    ("model-typo", lambda s1, s2, ph, tp: ["sample", "a", "--model", "emoj"], "did you mean --model emoji"),
    ("model-typo-case", lambda s1, s2, ph, tp: ["noise", ph, "--model", "Emoji"], "did you mean --model emoji"),
    ("model-unknown-name", lambda s1, s2, ph, tp: ["sample", "a", "--model", "bananas"], "--model takes emoji"),
    ("model-not-a-model-dir", lambda s1, s2, ph, tp: ["sample", "a", "--model", tp], "not a diffusers model directory"),
    ("stage2-emoji", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--stage2", "emoji", "--upscale"],
     "--stage2 emoji: emoji models"),
    ("upscale-stage2-emoji", lambda s1, s2, ph, tp: ["upscale", ph, "--model", s1, "--stage2", "emoji"],
     "--stage2 emoji"),
    ("stage2-missing-says-stage2", lambda s1, s2, ph, tp: ["sample", "a", "--model", s1, "--stage2", tp / "nope"],
     "--stage2"),
]


def _gif(tp):
    p = tp / "in.gif"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(p)
    return p


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def _dot(tp):
    a = np.zeros((256, 256), np.uint8)
    a[100, 100] = 255  # one pixel of 256: gone after the nearest resize to 16 px
    p = tp / "dot.png"
    Image.fromarray(a).save(p)
    return p


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_refused_up_front(cli, tiny_models, tmp_path, photo, monkeypatch, case):
    _, make, fragment = case
    s1, s2 = tiny_models
    args = make(s1, s2, photo, tmp_path)
    if "-o" not in args and args[0] != "embed":
        args += ["-o", tmp_path / "out.png"]
    _refused(cli, tmp_path, monkeypatch, *args, fragment=fragment)


def test_embed_into_an_unwritable_cache_dir_as_a_non_root_user(cli, tiny_models, tmp_path, monkeypatch):
    """As root os.access always says yes; answer as it would for an ordinary user."""
    s1, _ = tiny_models
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != ro and real(p, mode, **kw))
    line = _refused(cli, tmp_path, monkeypatch, "embed", "a", "--model", s1, "--cache-dir", ro / "cache")
    assert "permission denied" in line and "--cache-dir" in line


def test_out_of_cpu_memory_is_one_line(cli, tiny_models, tmp_path, monkeypatch):
    s1, _ = tiny_models

    def oom(self, *a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 98304000000 bytes")

    monkeypatch.setattr(DFEdit, "generate", oom)
    line = _refused(cli, tmp_path, monkeypatch, "sample", "a", "--model", s1, "--no-upscale", "-o", tmp_path / "o.png",
                    cheap=False)
    assert "out of memory" in line and "--num-samples" in line


def test_float16_on_the_cpu_gets_a_note(cli, tiny_models, tmp_path):
    s1, _ = tiny_models
    _, err = ok(cli("sample", "a", "--model", s1, "--no-upscale", "--stride", "330", "--dtype", "float16", *FAST,
                     "-o", tmp_path / "h.png"))
    assert "note: float16 is many times slower than float32 on a CPU" in err
    _, err = ok(cli("sample", "a", "--model", s1, "--no-upscale", "--stride", "330", *FAST, "-o", tmp_path / "f.png"))
    assert "note" not in err


# ---- outputs a person can see ------------------------------------------------------------------------

def test_single_image_is_native_plus_an_enlarged_display_copy(cli, m, tmp_path):
    s1 = m[1]
    _, err = ok(cli("sample", "a dog", *m, "--no-upscale", "--stride", "90", "--device", "cpu",
                     "-o", tmp_path / "a.png"))
    a = pixels(tmp_path / "a.png")
    assert a.shape == (16, 16, 3)  # native: what the next command reads
    d = pixels(tmp_path / "a.display.png")
    assert d.shape == (256, 256, 3)  # 16 px x 16, nearest-neighbour: every model pixel a 16 x 16 block
    assert np.array_equal(d, np.kron(a, np.ones((16, 16, 1), np.uint8)))
    meta = read_metadata(tmp_path / "a.display.png")
    assert meta["display"] == {"native_px": 16, "shown_px": 256, "scale": 16, "resample": "nearest",
                               "of": str(tmp_path / "a.png")}
    assert meta["prompt"] == "a dog" and meta["model"] == str(s1)
    assert "a.png (16x16)" in err and "a.display.png (256x256, a display copy)" in err
    # --no-display: the native image only; stage II's 32 px is still under 128 px: a copy by default
    ok(cli("sample", "a dog", *m, "--no-upscale", "--stride", "90", *FAST, "--no-display", "-o", tmp_path / "b.png"))
    assert not (tmp_path / "b.display.png").exists() and np.array_equal(pixels(tmp_path / "b.png"), a)
    ok(cli("sample", "a dog", *m, "--stride", "90", "--stage2-steps", "3", *FAST, "-o", tmp_path / "c.png"))
    assert pixels(tmp_path / "c.png").shape == (32, 32, 3) and pixels(tmp_path / "c.display.png").shape == (256, 256, 3)


def test_default_names_skip_a_taken_display_copy(cli, m, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dfedit-sample.display.png").write_bytes(b"someone's file")
    _, err = ok(cli("sample", "a", *m, "--no-upscale", "--stride", "330", "--device", "cpu"))
    assert "wrote dfedit-sample-1.png" in err and (tmp_path / "dfedit-sample-1.display.png").is_file()
    assert (tmp_path / "dfedit-sample.display.png").read_bytes() == b"someone's file"
    assert not (tmp_path / "dfedit-sample.png").exists()


def _caption(label: str, tile: int = 128) -> np.ndarray:
    """The caption strip grid() draws under a tile for `label`."""
    g = np.asarray(grid([[Image.new("RGB", (tile, tile))]], [[label]], pad=2))
    return g[2 + tile:2 + tile + 14, 2:2 + tile]


def _strip(g: np.ndarray, row: int, col: int, tile: int = 128, pad: int = 2) -> np.ndarray:
    y, x = pad + row * (tile + 14 + pad) + tile, pad + col * (tile + pad)
    return g[y:y + 14, x:x + tile]


def _tile(g, row, col, native, tile=128, pad=2):
    y, x = pad + row * (tile + 14 + pad), pad + col * (tile + pad)
    k = tile // native
    return g[y:y + tile:k, x:x + tile:k]


def test_sdedit_sweep_labels_the_original_as_original(cli, m, tmp_path, photo):
    ok(cli("sdedit", photo, "--i-start", "10", "--i-start", "20", *m, "--no-upscale", *FAST, "-o", tmp_path / "s.png"))
    g = pixels(tmp_path / "s.png")
    for row, (i, t) in enumerate([(10, 690), (20, 390)]):
        assert np.array_equal(_strip(g, row, 0), _caption("original"))
        assert np.array_equal(_strip(g, row, 1), _caption(f"i_start={i} (t={t})"))
        assert not np.array_equal(_strip(g, row, 0), _caption(f"i_start={i} (t={t})"))
    assert np.array_equal(_tile(g, 0, 0, 16), np.asarray(to_pil(load_image(photo, 16))[0]))
    assert not (tmp_path / "s.display.png").exists()


def test_sdedit_single_display_is_original_beside_result(cli, m, tmp_path, photo):
    ok(cli("sdedit", photo, "--i-start", "20", *m, "--no-upscale", *FAST, "-o", tmp_path / "s.png"))
    out, d = pixels(tmp_path / "s.png"), pixels(tmp_path / "s.display.png")
    assert out.shape == (16, 16, 3) and d.shape == (128 + 14 + 4, 2 * 128 + 3 * 2, 3)
    assert np.array_equal(_tile(d, 0, 0, 16), np.asarray(to_pil(load_image(photo, 16))[0]))
    assert np.array_equal(_tile(d, 0, 1, 16), out)
    assert np.array_equal(_strip(d, 0, 0), _caption("original"))
    assert read_metadata(tmp_path / "s.display.png")["display"]["panels"] == ["original", "i_start=20 (t=390)"]


@pytest.mark.parametrize("upscale,size", [("--no-upscale", 16), ("--upscale", 32)])
def test_inpaint_shows_original_mask_result(cli, m, tmp_path, photo, upscale, size):
    mask = _mask(tmp_path)
    ok(cli("inpaint", photo, "--mask", mask, *m, upscale, "--stride", "90", "--stage2-steps", "3", *FAST,
            "-o", tmp_path / "i.png"))
    out, d = pixels(tmp_path / "i.png"), pixels(tmp_path / "i.display.png")
    assert out.shape == (size, size, 3)  # the result itself stays at the output size
    assert d.shape == (128 + 14 + 4, 3 * 128 + 4 * 2, 3)
    assert np.array_equal(_tile(d, 0, 0, size), np.asarray(to_pil(load_image(photo, size))[0]))
    with Image.open(mask) as mm:
        want = np.asarray(mm.convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127
    assert np.array_equal(_tile(d, 0, 1, size)[..., 0] > 127, want)  # white = regenerated
    assert np.array_equal(_tile(d, 0, 2, size), out)
    for c, label in enumerate(["original", "mask (white = new)", "result"]):
        # the caption's first (blank) row under the mask tile is the bottom of the mask's frame
        assert np.array_equal(_strip(d, 0, c)[1:], _caption(label)[1:])


def test_inpaint_grid_with_several_samples(cli, m, tmp_path, photo):
    ok(cli("inpaint", photo, "--mask", _mask(tmp_path), *m, "--no-upscale", "--stride", "90", "-n", "2", *FAST,
            "-o", tmp_path / "i.png"))
    g = pixels(tmp_path / "i.png")
    assert g.shape == (128 + 14 + 4, 4 * 128 + 5 * 2, 3)  # original | mask | result #1 | result #2
    assert np.array_equal(_strip(g, 0, 3), _caption("result #2"))


def test_trajectory_gif_uses_the_grid_tile_size(cli, m, tmp_path):
    ok(cli("sample", "a", *m, "--no-upscale", "--stride", "90", *FAST, "-o", tmp_path / "a.png",
            "--trajectory", tmp_path / "a.gif"))
    with Image.open(tmp_path / "a.gif") as g:
        assert g.size == (128, 128)
    ok(cli("sample", "a", *m, "--no-upscale", "--stride", "90", "-n", "2", *FAST, "-o", tmp_path / "b.png",
            "--trajectory", tmp_path / "b.gif"))
    with Image.open(tmp_path / "b.gif") as g:
        assert g.size == (2 * 128 + 3 * 2, 128 + 2 * 2)


def test_hybrid_grid_is_enlarged_and_labelled(cli, m, tmp_path):
    ok(cli("hybrid", "a", "b", *m, "--no-upscale", "--stride", "330", "-n", "2", *FAST, "-o", tmp_path / "h.png"))
    g = pixels(tmp_path / "h.png")
    assert g.shape == (128 + 14 + 4, 2 * 128 + 3 * 2, 3)
    assert np.array_equal(_strip(g, 0, 1), _caption("a + b #2"))


def test_model_default_prompt_for_edits_is_ifs_photo_prompt(cli, m, tmp_path, photo):
    ok(cli("inpaint", photo, "--mask", _mask(tmp_path), *m, "--no-upscale", "--stride", "330", *FAST,
            "-o", tmp_path / "i.png"))
    assert read_metadata(tmp_path / "i.png")["prompt"] == "a high quality photo"


# ---- help text ---------------------------------------------------------------------------------------

def test_help_names_the_builtin_model_and_has_no_broken_text(cli):
    import re
    code, out, _ = cli("--help")
    assert code == 0 and "--model emoji" in out
    code, out, _ = cli("sample", "--help")
    assert code == 0 and "emoji (built in" in " ".join(out.split())
    code, out, _ = cli("hybrid", "--help")
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    assert ", ," not in flat and "(a middle band,)" in flat
    code, out, _ = cli("sdedit", "--help")
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    assert "0..33 at stride 30" in flat and "1..33" not in flat


@pytest.mark.parametrize("n", [1, 2])
def test_inpaint_display_frames_the_mask_tile(cli, m, tmp_path, photo, n):
    """The mask's white (regenerate) must not vanish into the white page: a grey frame in the gap
    around the mask tile, on all four sides, and none around the other tiles (issue 23)."""
    mask = _mask(tmp_path, fill=255)  # all white: the case where the tile is invisible without a frame
    out = tmp_path / "i.png"
    ok(cli("inpaint", photo, "--mask", mask, *m, "--no-upscale", "--stride", "90", "-n", n, *FAST, "-o", out))
    d = pixels(tmp_path / "i.display.png" if n == 1 else out).astype(int)
    tile, pad = 128, 2
    x0, y0 = pad + 1 * (tile + pad), pad  # the mask tile: row 0, column 1
    white = np.array([255, 255, 255])
    frame = [d[y0 - 1, x0 - 1:x0 + tile + 1], d[y0 + tile, x0 - 1:x0 + tile + 1],
             d[y0 - 1:y0 + tile + 1, x0 - 1], d[y0 - 1:y0 + tile + 1, x0 + tile]]
    for side in frame:
        assert (np.abs(side - white).sum(-1) > 60).all()  # visibly not white, all the way round
    assert np.array_equal(d[y0:y0 + tile, x0:x0 + tile], np.full((tile, tile, 3), 255))  # the tile itself
    assert (d[y0 - 1, pad:pad + tile] == 255).all()  # the original's tile has no frame


def test_edit_help_says_what_no_prompt_gives_on_the_emoji_model(cli):
    """Issue 23: without --prompt the emoji model's unconditional branch gives smudges at high noise."""
    import re
    for command in ("sdedit", "inpaint"):
        code, out, _ = cli(command, "--help")
        flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
        assert code == 0 and "smudges rather than a clean emoji" in flat and "--prompt 'grinning face'" in flat
    code, out, _ = cli("sample", "--help")
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    assert code == 0 and "dfedit prompts --model emoji" in flat and 'the empty prompt "" draws smudges' in flat
