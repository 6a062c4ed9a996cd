"""dfedit.images: any input file -> (1, 3, S, S) tensor in [-1, 1]; tensors -> PNGs with metadata."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from dfedit.errors import DfeditError
from dfedit.images import load_image, pil_to_tensor, to_pil
from dfedit.outputs import grid, read_metadata, save_png

WHITE = (255, 255, 255)


def _check_tensor(x: torch.Tensor, size: int) -> None:
    assert x.shape == (1, 3, size, size)
    assert x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


def _rgb(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8-range floats, for readable expectations."""
    return ((x[0].permute(1, 2, 0).numpy() + 1.0) * 127.5)


def _load(img: Image.Image, tmp_path, name="in.png", size=None, **save_kw):
    p = tmp_path / name
    img.save(p, **save_kw)
    size = size or min(img.size)
    x = load_image(p, size)
    _check_tensor(x, size)
    return _rgb(x)


# ---- modes ----------------------------------------------------------------------------------------

def test_rgba_transparent_becomes_white(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[:, :4] = (255, 0, 0, 0)      # fully transparent red: must come out white, not red or black
    a[:, 4:] = (0, 0, 255, 255)    # opaque blue stays blue
    a[0, 4] = (0, 0, 0, 128)       # half-transparent black over white: mid grey
    out = _load(Image.fromarray(a, "RGBA"), tmp_path)
    np.testing.assert_allclose(out[:, :4], 255.0, atol=1e-3)
    np.testing.assert_allclose(out[1:, 4:], np.broadcast_to([0, 0, 255], out[1:, 4:].shape), atol=1e-3)
    np.testing.assert_allclose(out[0, 4], [127, 127, 127], atol=1.01)


def test_palette_with_transparency_becomes_white(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * (254 * 3))  # index 0 black (transparent), 1 green
    img.paste(1, (4, 0, 8, 8))
    out = _load(img, tmp_path, transparency=0)
    assert Image.open(tmp_path / "in.png").mode == "P"
    np.testing.assert_allclose(out[:, :4], 255.0, atol=1e-3)
    np.testing.assert_allclose(out[:, 4:], np.broadcast_to([0, 255, 0], out[:, 4:].shape), atol=1e-3)


@pytest.mark.parametrize("mode,value,colour", [("RGB", (10, 20, 30), (200, 100, 50)), ("L", 7, 90)])
def test_colour_key_transparency_becomes_white(tmp_path, mode, value, colour):
    """PNG tRNS colour keys on RGB / L images are transparency too (not only alpha channels)."""
    img = Image.new(mode, (8, 8), value)
    img.paste(colour, (4, 0, 8, 8))
    out = _load(img, tmp_path, transparency=value)
    assert "transparency" in Image.open(tmp_path / "in.png").info
    np.testing.assert_allclose(out[:, :4], 255.0, atol=1e-3)
    expect = colour if mode == "RGB" else (colour,) * 3
    np.testing.assert_allclose(out[:, 4:], np.broadcast_to(expect, out[:, 4:].shape), atol=1e-3)


def test_grayscale_l(tmp_path):
    a = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = _load(Image.fromarray(a, "L"), tmp_path)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], a, atol=1e-3)


def test_la_transparent_becomes_white(tmp_path):
    a = np.zeros((8, 8, 2), np.uint8)
    a[:, :4] = (0, 0)      # transparent black
    a[:, 4:] = (60, 255)   # opaque grey
    out = _load(Image.fromarray(a, "LA"), tmp_path)
    np.testing.assert_allclose(out[:, :4], 255.0, atol=1e-3)
    np.testing.assert_allclose(out[:, 4:], 60.0, atol=1e-3)


def test_16bit_grayscale_is_scaled_from_65535(tmp_path):
    a = np.zeros((8, 8), np.uint16)
    a[0, 0], a[0, 1], a[0, 2] = 65535, 32768, 257 * 40
    a[1:, :] = 100  # a dark 16-bit image: 100/65535 is black, not 100/255
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    p = tmp_path / "i16.png"
    img.save(p)
    assert Image.open(p).mode.startswith("I")
    x = load_image(p, 8)
    _check_tensor(x, 8)
    assert torch.allclose(x[0, :, 0, 0], torch.ones(3))                 # 65535 -> 1.0
    assert torch.allclose(x[0, :, 0, 1], torch.full((3,), 128 / 127.5 - 1), atol=1e-6)
    assert torch.allclose(x[0, :, 0, 2], torch.full((3,), 40 / 127.5 - 1), atol=1e-6)
    assert torch.allclose(x[0, :, 1:], torch.full_like(x[0, :, 1:], -1.0))  # 100 -> 0 -> -1.0
    # A 16-bit file whose values all happen to be <= 255 is still 16-bit (nearly black), not 8-bit.
    Image.fromarray(np.full((8, 8), 100, np.uint16)).save(tmp_path / "dark.png")
    dark = load_image(tmp_path / "dark.png", 8)
    assert torch.equal(dark, torch.full_like(dark, -1.0))


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (8, 8), (0, 0, 0, 0))     # no ink: white
    img.paste((255, 0, 0, 0), (4, 0, 8, 8))           # pure cyan
    out = _load(img, tmp_path, name="in.tif")
    assert Image.open(tmp_path / "in.tif").mode == "CMYK"
    np.testing.assert_allclose(out[:, :4], 255.0, atol=1e-3)
    np.testing.assert_allclose(out[:, 4:], np.broadcast_to([0, 255, 255], out[:, 4:].shape), atol=1e-3)


@pytest.mark.parametrize("w,h", [(48, 16), (16, 48), (50, 16), (17, 52)])
def test_non_square_keeps_centre_square(tmp_path, w, h):
    s = min(w, h)
    img = Image.new("RGB", (w, h), (255, 0, 0))            # red bands to be cropped away
    left, top = (w - s) // 2, (h - s) // 2
    img.paste((0, 0, 255), (left, top, left + s, top + s))  # the blue centre square
    out = _load(img, tmp_path, size=s)
    np.testing.assert_allclose(out, np.broadcast_to([0, 0, 255], out.shape), atol=1e-3)


def test_non_square_is_resized_not_squished(tmp_path):
    img = Image.new("RGB", (96, 32), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 32))
    img.paste((0, 255, 0), (32, 0, 48, 32))  # left half of the centre square green, right half blue
    out = _load(img, tmp_path, size=16)
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[:, :7], np.broadcast_to([0, 255, 0], out[:, :7].shape), atol=1.5)
    np.testing.assert_allclose(out[:, 9:], np.broadcast_to([0, 0, 255], out[:, 9:].shape), atol=1.5)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 64 wide x 32 tall, left half red, right half blue; EXIF 6 = "rotate 90 degrees clockwise
    # to display": displayed 32 x 64 with red on top, so the centre square is red above blue.
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)
    out = _rgb(load_image(p, 32))
    top, bottom = out[:12].mean(axis=(0, 1)), out[20:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 50, top            # red on top
    assert bottom[2] > 200 and bottom[0] < 50, bottom   # blue below
    # ... and without the EXIF tag the same pixels load unrotated (left/right split).
    img.save(tmp_path / "plain.jpg", quality=95)
    plain = _rgb(load_image(tmp_path / "plain.jpg", 32))
    assert plain[:, :12].mean(axis=(0, 1))[0] > 200 and plain[:, 20:].mean(axis=(0, 1))[2] > 200


def test_output_range_and_shape_on_random_image(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    a[0, 0], a[0, 1] = 0, 255
    p = tmp_path / "r.png"
    Image.fromarray(a).save(p)
    x = load_image(p, 24)  # Lanczos overshoots: must still be clipped to [-1, 1]
    _check_tensor(x, 24)
    assert x.min() < -0.9 and x.max() > 0.9


# ---- bad files ------------------------------------------------------------------------------------

def test_bad_inputs_are_dfedit_errors(tmp_path):
    with pytest.raises(DfeditError, match="does not exist"):
        load_image(tmp_path / "missing.png", 16)
    with pytest.raises(DfeditError, match="directory"):
        load_image(tmp_path, 16)
    (tmp_path / "x.png").write_text("not an image\n")
    with pytest.raises(DfeditError, match="not an image"):
        load_image(tmp_path / "x.png", 16)
    a = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DfeditError, match="truncated"):
        load_image(tmp_path / "cut.png", 16)


def test_huge_image_is_a_dfedit_error(tmp_path, monkeypatch):
    """Pillow's decompression-bomb guard must become one clear error, not a traceback."""
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2 * 1000: Pillow refuses it
    with pytest.raises(DfeditError, match="big.png"):
        load_image(tmp_path / "big.png", 16)


# ---- tensors <-> PIL ------------------------------------------------------------------------------

def test_to_pil_pil_to_tensor_round_trip_exact():
    a = np.random.default_rng(2).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    a[0, :3] = [[0, 0, 0], [255, 255, 255], [127, 128, 1]]
    img = Image.fromarray(a)
    x = pil_to_tensor(img)
    assert x.shape == (1, 3, 13, 21) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    back = to_pil(x)
    assert len(back) == 1 and back[0].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(back[0]), a)


def test_to_pil_batch_clamps():
    x = torch.stack([torch.full((3, 4, 4), -3.0), torch.full((3, 4, 4), 3.0), torch.zeros(3, 4, 4)])
    ims = to_pil(x)
    assert [np.asarray(im)[0, 0, 0] for im in ims] == [0, 255, 128]


# ---- grid -----------------------------------------------------------------------------------------

def test_grid_sizes_and_placement():
    tiles = [Image.new("RGB", (16, 16), (10 * i, 0, 0)) for i in range(1, 7)]
    g = grid([tiles[:3], tiles[3:]], pad=2, min_tile=16)
    assert g.size == (3 * 16 + 4 * 2, 2 * 16 + 3 * 2)
    assert g.getpixel((0, 0)) == WHITE
    assert g.getpixel((2, 2)) == (10, 0, 0)
    assert g.getpixel((2 + 2 * 18 + 15, 2 + 18 + 15)) == (60, 0, 0)  # last pixel of the last tile
    assert g.getpixel((2 + 16, 2)) == WHITE                         # padding between tiles
    labelled = grid([tiles[:3], tiles[3:]], [["a", "b", "c"], ["d", "e", "f"]], pad=2, min_tile=16)
    assert labelled.size == (3 * 16 + 4 * 2, 2 * (16 + 14) + 3 * 2)
    caption = np.asarray(labelled)[2 + 16:2 + 30, 2:18]
    assert (caption < 128).any()  # the label is drawn (dark pixels under the tile)
    # every grid shows small tiles at >= 128 px by a whole factor, nearest-neighbour (pixels stay exact)
    big = grid([tiles[:3]], [["a", "b", "c"]], pad=2)
    assert big.size == (3 * 128 + 4 * 2, 128 + 14 + 2 * 2)
    assert big.getpixel((2 + 127, 2 + 127)) == (10, 0, 0) and big.getpixel((2 + 130, 2)) == (20, 0, 0)
    assert grid([tiles[:3]], pad=2).size == (3 * 128 + 4 * 2, 128 + 2 * 2)  # captions or not
    odd = grid([[Image.new("RGB", (48, 48))]], pad=0)
    assert odd.size == (144, 144)  # 48 px x 3: the smallest whole factor reaching 128


def test_grid_resizes_to_largest_tile_and_ragged_rows():
    small, big = Image.new("RGB", (16, 16), (0, 255, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    g = grid([[small, big, big], [small]], pad=1, min_tile=32)
    assert g.size == (3 * 32 + 4, 2 * 32 + 3)
    assert g.getpixel((1 + 31, 1 + 31)) == (0, 255, 0)  # the 16 px tile was scaled to 32
    assert g.getpixel((1 + 33 + 5, 33 + 5)) == WHITE     # missing tile in the short row is blank


# ---- save_png / read_metadata ---------------------------------------------------------------------

META = {"command": "sample", "prompt": "an oil painting — café ☕", "seed": 7, "cfg": 7.5, "stride": 30,
        "t": [250, 500], "model": "/some/dir", "nested": {"a": [1, 2.5, None], "b": True}}


def test_save_png_round_trips_metadata_and_pixels(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    p = save_png(Image.fromarray(a), tmp_path / "out.png", META)
    assert p == tmp_path / "out.png"
    assert os.listdir(tmp_path) == ["out.png"]  # no temp file left behind
    assert read_metadata(p) == META
    with Image.open(p) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), a)
        assert im.text["prompt"] == META["prompt"]  # strings stored as-is
        assert im.text["seed"] == "7" and json.loads(im.text["cfg"]) == 7.5
        assert json.loads(im.text["t"]) == [250, 500]
        assert json.loads(im.text["nested"]) == META["nested"]


def test_save_png_overwrites_atomically_and_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.png"
    save_png(Image.new("RGB", (4, 4), (1, 2, 3)), target, {"v": 1})
    old = target.read_bytes()

    import dfedit.files

    def exploding(tmp, data):
        """Writes half a file to the temp path, then fails (a full disk, a killed process)."""
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    # save_png encodes in memory first (so it can say how much space it needed), then writes the
    # bytes through dfedit.cache's atomic writer: the disk fails there.
    mp = pytest.MonkeyPatch()
    mp.setattr(dfedit.files, "write_file", exploding)
    try:
        with pytest.raises(DfeditError, match="no space left on the device"):
            save_png(Image.new("RGB", (4, 4), (9, 9, 9)), target, {"v": 2})
    finally:
        mp.undo()
    assert os.listdir(tmp_path) == ["out.png"]
    assert target.read_bytes() == old
    assert read_metadata(target) == {"v": 1}

    save_png(Image.new("RGB", (4, 4), (9, 9, 9)), target, {"v": 3})
    assert os.listdir(tmp_path) == ["out.png"]
    assert read_metadata(target) == {"v": 3}
    assert Image.open(target).getpixel((0, 0)) == (9, 9, 9)


def test_save_png_refuses_bad_paths(tmp_path):
    img = Image.new("RGB", (4, 4))
    with pytest.raises(DfeditError, match="must end in .png"):
        save_png(img, tmp_path / "out.jpg", {})
    with pytest.raises(DfeditError, match="does not exist"):
        save_png(img, tmp_path / "nope" / "out.png", {})
    (tmp_path / "d.png").mkdir()
    with pytest.raises(DfeditError, match="is a directory"):
        save_png(img, tmp_path / "d.png", {})
    assert sorted(os.listdir(tmp_path)) == ["d.png"]


def test_read_metadata_uses_the_json_chunk_not_a_guess(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("seed", "not json")
    info.add_text("dfedit", json.dumps({"seed": 5}))
    Image.new("RGB", (2, 2)).save(tmp_path / "m.png", pnginfo=info)
    assert read_metadata(tmp_path / "m.png") == {"seed": 5}


@pytest.mark.parametrize("exclusive", [False, True])
def test_every_write_reaches_the_disk_before_it_is_published(tmp_path, monkeypatch, exclusive):
    """The one atomic writer fsyncs the temporary file before it renames (or links) it into place:
    a crash right after the rename cannot leave an empty or partial PNG, checkpoint or cache entry."""
    from dfedit.files import atomic_write

    events = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def publish(name, real):
        def f(src, dst, *a, **k):
            events.append((name, str(src)))
            return real(src, dst, *a, **k)
        return f

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", publish("publish", real_replace))
    monkeypatch.setattr(os, "link", publish("publish", real_link))
    save_png(Image.new("RGB", (4, 4), (1, 2, 3)), tmp_path / "a.png", {"v": 1}, exclusive=exclusive)
    atomic_write(tmp_path / "b.json", b"{}", exclusive=exclusive)
    from pathlib import Path

    from dfedit.files import TEMP_RE

    assert [e[0] for e in events] == ["fsync", "publish"] * 2
    for (_, written), (_, published), target in zip(events[::2], events[1::2], ("a.png", "b.json")):
        assert written == published and Path(written).parent == tmp_path
        m = TEMP_RE.match(Path(written).name)
        assert m and m["target"] == target and int(m["pid"]) == os.getpid()
    assert read_metadata(tmp_path / "a.png") == {"v": 1} and (tmp_path / "b.json").read_bytes() == b"{}"
