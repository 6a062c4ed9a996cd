"""The `dfedit` CLI end to end on tiny IF checkpoints (16 px stage I -> 32 px stage II).

Every command runs in-process through the real Typer app and the real loading code. Outputs are
checked against the Python API and dfedit.images, and every bad input must give exactly one
`dfedit: error:` line, a non-zero exit code and no output file.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dfedit
from dfedit import DFEdit
from dfedit.images import load_image, to_pil
from dfedit.outputs import read_metadata
from helpers import ok

FAST = ["--device", "cpu", "--quiet"]


class ModelLoaded(Exception):
    """Raised by a patched from_pretrained: proves which weights a command loads."""


def _forbid(monkeypatch, *, unet=False, t5=False):
    import diffusers
    import transformers

    def boom(*a, **k):
        raise ModelLoaded(a[:1])

    if unet:
        monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", boom)
    if t5:
        monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", boom)


def _size(model_dir: Path) -> int:
    return json.loads((model_dir / "unet" / "config.json").read_text())["sample_size"]


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).copy()


def _tile(grid_px: np.ndarray, row: int, col: int, size: int, pad: int = 2, label_h: int = 0) -> np.ndarray:
    """Tile (row, col) of a grid of `size`-px images; captioned grids show tiles at >= 128 px
    (nearest-neighbour), so those are sampled back down to `size`."""
    shown = max(size, 128) if label_h else size
    y, x = pad + row * (shown + label_h + pad), pad + col * (shown + pad)
    step = shown // size
    return grid_px[y:y + shown:step, x:x + shown:step]


@pytest.fixture
def models(tiny_models):
    s1, s2 = tiny_models
    return s1, s2, ["--model", s1, "--stage2", s2]


# ---- sample ---------------------------------------------------------------------------------------

def test_sample_no_upscale_size_metadata_determinism_and_api_parity(cli, models, tmp_path):
    s1, s2, m = models
    args = ["sample", "a dog", *m, "--no-upscale", "--cfg", "5", "--stride", "90", *FAST]
    ok(cli(*args, "--seed", "3", "-o", tmp_path / "a.png"))
    ok(cli(*args, "--seed", "3", "-o", tmp_path / "b.png"))
    ok(cli(*args, "--seed", "4", "-o", tmp_path / "c.png"))

    a = _pixels(tmp_path / "a.png")
    size = _size(s1)
    assert size == 16 and a.shape == (size, size, 3)
    assert np.array_equal(a, _pixels(tmp_path / "b.png"))          # same seed: same pixels
    assert not np.array_equal(a, _pixels(tmp_path / "c.png"))      # other seed: other pixels
    assert a.std() > 0  # not a blank image

    meta = read_metadata(tmp_path / "a.png")
    assert meta["command"] == "sample" and meta["prompt"] == "a dog"
    assert meta["seed"] == 3 and meta["cfg"] == 5.0 and meta["stride"] == 90
    assert meta["steps"] == len(range(990, -1, -90)) and meta["num_samples"] == 1
    assert meta["model"] == str(s1)
    assert "stage2" not in meta  # stage II did not run
    assert meta["dfedit_version"] == dfedit.__version__
    assert meta["command_line"].startswith("dfedit")
    with Image.open(tmp_path / "a.png") as im:
        assert im.text["prompt"] == "a dog" and im.text["command"] == "sample"
        assert im.text["seed"] == "3" and im.text["cfg"] == "5.0" and im.text["stride"] == "90"
        assert im.text["model"] == str(s1)

    # The Python API gives exactly the CLI's pixels.
    res = DFEdit(model=str(s1), stage2=str(s2), device="cpu", quiet=True).sample(
        "a dog", seed=3, cfg=5.0, stride=90, upscale=False)
    assert np.array_equal(np.asarray(to_pil(res.images)[0]), a)


def test_sample_upscales_by_default(cli, models, tmp_path):
    s1, s2, m = models
    ok(cli("sample", "a cat", *m, "--stride", "90", "--stage2-steps", "4", "--seed", "1", *FAST,
            "-o", tmp_path / "up.png"))
    px = _pixels(tmp_path / "up.png")
    size = _size(s2)
    assert size == 32 and px.shape == (size, size, 3)
    meta = read_metadata(tmp_path / "up.png")
    assert meta["stage2"] == str(s2) and meta["stage2_steps"] == 4 and meta["noise_level"] == 250
    res = DFEdit(model=str(s1), stage2=str(s2), device="cpu", quiet=True).sample(
        "a cat", seed=1, stride=90, stage2_steps=4)
    assert np.array_equal(np.asarray(to_pil(res.images)[0]), px)


def test_sample_num_samples_grid(cli, models, tmp_path):
    """-n gives a grid like every other grid: tiles enlarged to 128 px (nearest), labelled below."""
    s1, s2, m = models
    ok(cli("sample", "a dog", *m, "--no-upscale", "--stride", "90", "-n", "3", *FAST, "-o", tmp_path / "g.png"))
    g = _pixels(tmp_path / "g.png")
    s, pad, label_h, shown = _size(s1), 2, 14, 128
    assert g.shape == (shown + label_h + 2 * pad, 3 * shown + 4 * pad, 3)
    tiles = [_tile(g, 0, c, s, label_h=label_h) for c in range(3)]
    res = DFEdit(model=str(s1), stage2=str(s2), device="cpu", quiet=True).sample(
        "a dog", seed=0, stride=90, upscale=False, num_samples=3)
    for c, im in enumerate(to_pil(res.images)):
        assert np.array_equal(tiles[c], np.asarray(im))  # each tile is that sample, pixel for pixel
        block = g[pad:pad + 8, pad + c * (shown + pad):pad + c * (shown + pad) + 8]
        assert (block == block[0, 0]).all()  # one model pixel = one 8 x 8 block (nearest-neighbour)
    assert not np.array_equal(tiles[0], tiles[1]) and not np.array_equal(tiles[1], tiles[2])
    assert (g[:pad] == 255).all() and (g[:, :pad] == 255).all()  # white padding around the tiles
    label_row = g[pad + shown:pad + shown + label_h, pad:pad + shown]
    assert (label_row < 128).any()  # a caption ("a dog #1") under the tile
    meta = read_metadata(tmp_path / "g.png")
    assert meta["num_samples"] == 3
    assert meta["display"] == {"native_px": s, "shown_px": shown, "scale": 8, "resample": "nearest"}
    assert not (tmp_path / "g.display.png").exists()  # a grid is its own display


# ---- noise / denoise ------------------------------------------------------------------------------

def test_noise_grid(cli, models, tmp_path, photo):
    s1, s2, m = models
    ok(cli("noise", photo, "--model", s1, "--t", "250", "--t", "500", "--t", "750", "--seed", "5", "-q",
            "-o", tmp_path / "n.png"))
    g = _pixels(tmp_path / "n.png")
    s, label_h = _size(s1), 14
    shown = max(s, 128)
    assert g.shape == (shown + label_h + 2 * 2, 4 * shown + 5 * 2, 3)
    x0 = load_image(photo, s)
    assert np.array_equal(_tile(g, 0, 0, s, label_h=label_h), np.asarray(to_pil(x0)[0]))
    noisy = DFEdit(model=str(s1), device="cpu", quiet=True).noise(x0, [250, 500, 750], seed=5)
    for c, x in enumerate(noisy, start=1):
        assert np.array_equal(_tile(g, 0, c, s, label_h=label_h), np.asarray(to_pil(x)[0]))
    # more noise, further from the original
    err = [np.abs(_tile(g, 0, c, s, label_h=label_h).astype(int) - np.asarray(to_pil(x0)[0])).mean()
           for c in (1, 2, 3)]
    assert err[0] < err[1] < err[2]
    meta = read_metadata(tmp_path / "n.png")
    assert meta["command"] == "noise" and meta["t"] == [250, 500, 750] and meta["seed"] == 5
    assert meta["model"] == str(s1) and meta["input"] == str(photo)


def test_denoise_grid(cli, models, tmp_path, photo):
    s1, _, m = models
    ok(cli("denoise", photo, "--model", s1, "--t", "690", "--stride", "90", "--seed", "2", *FAST,
            "-o", tmp_path / "d.png"))
    ok(cli("noise", photo, "--model", s1, "--t", "690", "--seed", "2", "-q", "-o", tmp_path / "n.png"))
    g = _pixels(tmp_path / "d.png")
    s, label_h = _size(s1), 14
    shown = max(s, 128)
    assert g.shape == (shown + label_h + 2 * 2, 5 * shown + 6 * 2, 3)
    tiles = [_tile(g, 0, c, s, label_h=label_h) for c in range(5)]  # original|noisy|blur|one-step|iterative
    assert np.array_equal(tiles[0], np.asarray(to_pil(load_image(photo, s))[0]))
    # the noisy tile is the forward process at t=690 with the same seed (the noise command's tile)
    assert np.array_equal(tiles[1], _tile(_pixels(tmp_path / "n.png"), 0, 1, s, label_h=label_h))
    for i in range(1, 5):
        for j in range(i + 1, 5):
            assert not np.array_equal(tiles[i], tiles[j]), (i, j)
    assert tiles[2].std() < tiles[1].std()  # the Gaussian blur smooths the noisy tile
    meta = read_metadata(tmp_path / "d.png")
    assert meta["command"] == "denoise" and meta["t"] == [690] and meta["stride"] == 90
    assert meta["seed"] == 2 and meta["prompt"] == "a high quality photo"


def test_denoise_i_start_equals_t(cli, models, tmp_path, photo):
    s1, _, _ = models
    base = ["denoise", photo, "--model", s1, "--seed", "9", *FAST]
    ok(cli(*base, "--i-start", "10", "-o", tmp_path / "i.png"))
    ok(cli(*base, "--t", "690", "-o", tmp_path / "t.png"))
    assert np.array_equal(_pixels(tmp_path / "i.png"), _pixels(tmp_path / "t.png"))
    assert read_metadata(tmp_path / "i.png")["t"] == [690]


# ---- embed / upscale ------------------------------------------------------------------------------

def test_embed_fills_cache_and_sample_then_skips_t5(cli, models, tmp_path, monkeypatch):
    s1, _, m = models
    cache = Path(os.environ["DFEDIT_CACHE"])
    with pytest.MonkeyPatch.context() as mp:  # (monkeypatch.undo() would also drop DFEDIT_CACHE)
        _forbid(mp, unet=True)  # embed needs T5 only
        ok(cli("embed", "p1", "p2", "--model", s1, *FAST))
    files = list((cache / "embeddings").glob("*/*.safetensors"))
    assert len(files) == 3  # p1, p2 and the empty (unconditional) prompt

    _forbid(monkeypatch, t5=True)
    for p in ("p1", "P2 "):  # same preprocessing (lower-case, strip) as the cache keys
        ok(cli("sample", p, *m, "--no-upscale", "--stride", "90", *FAST, "-o", tmp_path / f"{p.strip()}.png"))
    assert (tmp_path / "p1.png").is_file() and (tmp_path / "P2.png").is_file()
    # control: a prompt that was never embedded does need T5, so the patch is live
    with pytest.raises(ModelLoaded):
        cli("sample", "p3", *m, "--no-upscale", "--stride", "90", *FAST, "-o", tmp_path / "p3.png")
    assert not (tmp_path / "p3.png").exists()


def test_upscale_command(cli, models, tmp_path, photo):
    s1, s2, m = models
    ok(cli("upscale", photo, *m, "--prompt", "a photo", "--stage2-steps", "4", *FAST, "-o", tmp_path / "u.png"))
    px = _pixels(tmp_path / "u.png")
    assert px.shape == (_size(s2), _size(s2), 3) and px.std() > 0
    meta = read_metadata(tmp_path / "u.png")
    assert meta["command"] == "upscale" and meta["prompt"] == "a photo" and meta["stage2"] == str(s2)
    assert meta["stage2_steps"] == 4
    # the input is centre-cropped to stage I's size first, exactly as the Python API is fed
    r = DFEdit(model=str(s1), stage2=str(s2), device="cpu", quiet=True).upscale(
        load_image(photo, _size(s1)), "a photo", seed=0, steps=4)
    assert np.array_equal(np.asarray(r.pil()[0]), px)
    # a Result like every generating method's: the input as its stage I, the CLI's metadata but the input path
    assert r.stage1.shape[-1] == _size(s1) and r.meta == {k: v for k, v in meta.items() if k in r.meta}
    assert set(meta) - set(r.meta) == {"input", "command_line", "dfedit_version"}


# ---- output naming --------------------------------------------------------------------------------

def test_default_output_never_overwrites(cli, models, tmp_path, photo, monkeypatch):
    s1, _, _ = models
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dfedit-noise.png").write_bytes(b"precious")
    _, err = ok(cli("noise", photo, "--model", s1, "--t", "500"))
    assert "dfedit-noise-1.png" in err  # not quiet: says where it wrote
    ok(cli("noise", photo, "--model", s1, "--t", "500", "-q"))
    assert (tmp_path / "dfedit-noise.png").read_bytes() == b"precious"
    assert read_metadata("dfedit-noise-1.png")["command"] == "noise"
    assert read_metadata("dfedit-noise-2.png")["command"] == "noise"
    # a name the user gives is theirs to overwrite
    ok(cli("noise", photo, "--model", s1, "--t", "500", "-q", "-o", "dfedit-noise.png"))
    assert read_metadata("dfedit-noise.png")["t"] == [500]


def test_default_name_taken_during_the_run_is_not_overwritten(cli, models, tmp_path, photo, monkeypatch):
    """Two runs started together both pick dfedit-noise.png; the one that saves second must move
    to the next free name instead of replacing the first one's image."""
    from dfedit.pipeline import DFEdit
    s1, _, _ = models
    monkeypatch.chdir(tmp_path)
    real_noise = DFEdit.noise

    def noise_while_another_run_saves(self, *a, **k):
        (tmp_path / "dfedit-noise.png").write_bytes(b"the other run's image")
        (tmp_path / "dfedit-noise-1.png").write_bytes(b"and a third one")
        return real_noise(self, *a, **k)

    monkeypatch.setattr(DFEdit, "noise", noise_while_another_run_saves)
    _, err = ok(cli("noise", photo, "--model", s1, "--t", "500"))
    assert "wrote dfedit-noise-2.png" in err
    assert (tmp_path / "dfedit-noise.png").read_bytes() == b"the other run's image"
    assert (tmp_path / "dfedit-noise-1.png").read_bytes() == b"and a third one"
    assert read_metadata("dfedit-noise-2.png")["command"] == "noise"
    assert not list(tmp_path.glob(".*.tmp"))


def test_exclusive_write_falls_back_without_hard_links(tmp_path, monkeypatch):
    from dfedit.files import atomic_write

    def no_links(*a):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "x.bin"
    atomic_write(target, b"one", exclusive=True)
    assert target.read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        atomic_write(target, b"two", exclusive=True)
    assert target.read_bytes() == b"one" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


# ---- errors ---------------------------------------------------------------------------------------

def _truncated(tmp_path: Path) -> Path:
    a = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = tmp_path / "cut.png"
    Image.fromarray(a).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _not_image(tmp_path: Path) -> Path:
    p = tmp_path / "x.png"
    p.write_text("hello, I am text\n")
    return p


# Each case: (id, args factory, cheap). args(s1, s2, photo, tmp_path); cheap = must fail before any
# model weights load (argument and output checks come first).
CASES = [
    ("noise-missing-image", lambda s1, s2, ph, tp: ["noise", tp / "missing.png", "--model", s1], True),
    ("denoise-missing-image", lambda s1, s2, ph, tp: ["denoise", tp / "missing.png", "--model", s1], True),
    ("upscale-missing-image", lambda s1, s2, ph, tp: ["upscale", tp / "missing.png", "--model", s1,
                                                      "--stage2", s2], True),
    ("noise-text-file", lambda s1, s2, ph, tp: ["noise", _not_image(tp), "--model", s1], True),
    ("denoise-text-file", lambda s1, s2, ph, tp: ["denoise", _not_image(tp), "--model", s1], True),
    ("noise-truncated", lambda s1, s2, ph, tp: ["noise", _truncated(tp), "--model", s1], True),
    ("upscale-truncated", lambda s1, s2, ph, tp: ["upscale", _truncated(tp), "--model", s1, "--stage2", s2], True),
    ("noise-t-neg", lambda s1, s2, ph, tp: ["noise", ph, "--model", s1, "--t", "-1"], True),
    ("noise-t-1000", lambda s1, s2, ph, tp: ["noise", ph, "--model", s1, "--t", "250", "--t", "1000"], True),
    ("denoise-t-neg", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--t", "-1"], True),
    ("denoise-t-1000", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--t", "1000"], True),
    ("sample-stride-0", lambda s1, s2, ph, tp: ["sample", "a dog", "--model", s1, "--stride", "0"], True),
    ("sample-stride-1000", lambda s1, s2, ph, tp: ["sample", "a dog", "--model", s1, "--stride", "1000"], True),
    ("denoise-stride-0", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--stride", "0"], True),
    ("denoise-stride-1000", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--stride", "1000"], True),
    ("denoise-i-start-99", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--i-start", "99"], True),
    ("denoise-t-and-i-start", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "--t", "690",
                                                      "--i-start", "10"], True),
    ("sample-no-model-dir", lambda s1, s2, ph, tp: ["sample", "a dog", "--model", "/nonexistent/dir"], True),
    ("noise-no-model-dir", lambda s1, s2, ph, tp: ["noise", ph, "--model", "/nonexistent/dir"], True),
    ("denoise-no-model-dir", lambda s1, s2, ph, tp: ["denoise", ph, "--model", "/nonexistent/dir"], True),
    ("upscale-no-model-dir", lambda s1, s2, ph, tp: ["upscale", ph, "--model", "/nonexistent/dir"], True),
    ("embed-no-model-dir", lambda s1, s2, ph, tp: ["embed", "p", "--model", "/nonexistent/dir"], True),
    ("sample-empty-model-dir", lambda s1, s2, ph, tp: ["sample", "a dog", "--model", _empty(tp)], True),
    ("noise-empty-model-dir", lambda s1, s2, ph, tp: ["noise", ph, "--model", _empty(tp)], True),
    ("embed-empty-model-dir", lambda s1, s2, ph, tp: ["embed", "p", "--model", _empty(tp)], True),
    ("sample-stage2-missing", lambda s1, s2, ph, tp: ["sample", "a dog", "--model", s1, "--stage2",
                                                      "/nonexistent/ii", "--stride", "90"], True),
    ("sample-stage1-as-stage2", lambda s1, s2, ph, tp: ["sample", "a dog", "--model", s1, "--stage2", s1], True),
    ("sample-noise-level-5000", lambda s1, s2, ph, tp: ["sample", "a dog", "--model", s1, "--stage2", s2,
                                                        "--noise-level", "5000"], True),
    ("upscale-stage1-as-stage2", lambda s1, s2, ph, tp: ["upscale", ph, "--model", s1, "--stage2", s1], True),
    ("out-no-parent", lambda s1, s2, ph, tp: ["sample", "a dog", "--model", s1, "-o", tp / "no" / "o.png"], True),
    ("out-not-png", lambda s1, s2, ph, tp: ["noise", ph, "--model", s1, "-o", tp / "o.jpg"], True),
    ("out-no-suffix", lambda s1, s2, ph, tp: ["denoise", ph, "--model", s1, "-o", tp / "out"], True),
    ("out-is-dir", lambda s1, s2, ph, tp: ["noise", ph, "--model", s1, "-o", _mkdir(tp / "d.png")], True),
]


def _empty(tmp_path: Path) -> Path:
    return _mkdir(tmp_path / "empty-model")


def _mkdir(p: Path) -> Path:
    p.mkdir(exist_ok=True)
    return p


def _outputs(root: Path) -> set:
    return {p for p in root.rglob("*") if p.is_file() and (p.suffix.lower() in (".png", ".jpg") or
                                                            p.name.endswith(".tmp") or p.name == "out")}


def _assert_one_line_error(code, out, err):
    assert code != 0
    assert code != 2 or "Usage" not in err  # a dfedit error, not a Typer usage error
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dfedit: error: "), err
    assert "Traceback" not in out + err and "Error(" not in err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error_and_writes_nothing(cli, tiny_models, tmp_path, photo, monkeypatch, case):
    _, make_args, cheap = case
    s1, s2 = tiny_models
    monkeypatch.chdir(tmp_path)
    args = make_args(s1, s2, photo, tmp_path)
    if "-o" not in args and args[0] != "embed":
        args += ["-o", tmp_path / "out.png"]
    before = _outputs(tmp_path)
    if cheap:
        _forbid(monkeypatch, unet=True, t5=True)
    code, out, err = cli(*args, "--quiet")
    _assert_one_line_error(code, out, err)
    assert _outputs(tmp_path) == before
    assert not list(tmp_path.glob("dfedit-*.png"))


def test_read_only_output_directory(cli, tiny_models, tmp_path, photo):
    s1, _ = tiny_models
    ro = _mkdir(tmp_path / "ro")
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            # root: os.access says yes and the write really succeeds, so there is no error to test
            pytest.skip("running as root: a read-only directory is writable")
        code, out, err = cli("noise", photo, "--model", s1, "-q", "-o", ro / "o.png")
        _assert_one_line_error(code, out, err)
        assert "permission denied" in err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_unwritable_output_directory_as_seen_by_a_non_root_user(cli, tiny_models, tmp_path, photo, monkeypatch):
    """The same check, runnable as root: os.access answers as it would for an ordinary user."""
    s1, _ = tiny_models
    ro = _mkdir(tmp_path / "ro")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != ro and real_access(p, mode, **kw))
    _forbid(monkeypatch, unet=True, t5=True)
    code, out, err = cli("noise", photo, "--model", s1, "-q", "-o", ro / "o.png")
    _assert_one_line_error(code, out, err)
    assert "permission denied" in err
    assert list(ro.iterdir()) == []
