"""Fault tests for the caches dfedit-train owns and for dfedit's outputs on an emoji model.

Each plants one fault: a rotten / truncated / NaN / mis-shaped / mis-listed caption shard, a
directory in a shard's place, a cache that cannot be written, a damaged data cache, a truncated or
killed npm download, a full disk while writing a PNG or GIF. The command must still give the
output of a clean run (rebuilding what was damaged, with one notice) or one error line, and leave
the previous file intact.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from dfedit.cli import app as dfedit_app
from dfedit.errors import DfeditError
from dfedit_train import data as datamod
from dfedit_train.cli import app as train_app

runner = CliRunner()
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from helpers import DiskFull  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, npm_tarball, tiny_encoder):
    out = tmp_path_factory.mktemp("emoji") / "run"
    r = runner.invoke(train_app, [str(a) for a in ["emoji", "--preset", "tiny", "--data", npm_tarball,
                                                   "--text-encoder", tiny_encoder, "--max-length", "12",
                                                   "--out", out, "--epochs", "1", "--quiet", "--sample-every", "0"]])
    assert r.exit_code == 0, r.output
    return out


def sample(run_dir, prompt, out, cache, *extra):
    r = runner.invoke(dfedit_app, ["sample", prompt, "--model", str(run_dir), "--seed", "3", "--stride", "100",
                                   "--cache-dir", str(cache), "-o", str(out), "--quiet", *map(str, extra)])
    assert "Traceback" not in r.output, r.output
    return r


def px(p):
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def warnings(r):
    return [x for x in r.stderr.splitlines() if x.startswith("warning: ")]


def shard_of(cache, prompt):
    for f in (cache / "text").glob("*/*.safetensors"):
        with safe_open(str(f), "pt") as h:
            if prompt in json.loads(h.metadata()["prompts"]):
                return f
    raise AssertionError(f"no shard holds {prompt!r}")


def _rot(f):  # flip the lowest bit of some data bytes (fp16 values stay finite), header untouched
    b = bytearray(f.read_bytes())
    start = 8 + int.from_bytes(b[:8], "little")
    for i in range(start, len(b), 14):
        b[i] ^= 0x01
    f.write_bytes(bytes(b))


def _rewrite(f, fn):
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
        t = {k: h.get_tensor(k) for k in h.keys()}
    t, meta = fn(t, dict(meta))
    f.unlink()
    save_file(t, str(f), metadata=meta)


DAMAGE = {
    "rotten": (_rot, "its checksum does not match its data"),
    "nan": (lambda f: _rewrite(f, lambda t, m: ({**t, "states": torch.full_like(t["states"], float("nan"))},
                                                {"prompts": m["prompts"]})), "it holds NaN or infinite values"),
    "rows-disagree": (lambda f: _rewrite(f, lambda t, m: (t, {"prompts": json.dumps(json.loads(m["prompts"]) + ["x"])})),
                      "it lists 2 prompts but holds 1 states"),
    "wrong-width": (lambda f: _rewrite(f, lambda t, m: ({**t, "states": t["states"][..., :16].contiguous()},
                                                        {"prompts": m["prompts"]})), "states are 16 wide"),
    "truncated": (lambda f: f.write_bytes(f.read_bytes()[:100]), "unreadable"),
    "garbage": (lambda f: f.write_bytes(os.urandom(300)), "unreadable"),
    "directory": (lambda f: (f.unlink(), f.mkdir(), (f / "x").write_text("x")), "unreadable"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_caption_shard_is_rebuilt_and_the_output_is_unchanged(run_dir, tmp_path, case):
    cache = tmp_path / "cache"
    clean = sample(run_dir, "grinning face", tmp_path / "clean.png", cache)
    assert clean.exit_code == 0 and warnings(clean) == [], clean.stderr
    sample(run_dir, "red heart", tmp_path / "other.png", cache)
    f = shard_of(cache, "grinning face")
    damage, why = DAMAGE[case]
    damage(f)
    # another prompt: its output is unaffected (a shard whose header is gone cannot say which
    # prompts it held, so that one is reported and removed by whichever lookup meets it first)
    r1 = sample(run_dir, "red heart", tmp_path / "other2.png", cache)
    assert r1.exit_code == 0 and np.array_equal(px(tmp_path / "other.png"), px(tmp_path / "other2.png"))
    r2 = sample(run_dir, "grinning face", tmp_path / "again.png", cache)
    assert r2.exit_code == 0, r2.output
    w = warnings(r1) + warnings(r2)
    assert len(w) == 1 and "caption cache shard" in w[0] and why in w[0] and "recomputing" in w[0], w
    assert warnings(r1) == [] or case in ("truncated", "garbage", "directory")
    assert np.array_equal(px(tmp_path / "clean.png"), px(tmp_path / "again.png"))
    # rebuilt: valid, checksummed, and the next run reads it silently
    with safe_open(str(shard_of(cache, "grinning face")), "pt") as h:
        assert "sha256" in h.metadata()
    r = sample(run_dir, "grinning face", tmp_path / "third.png", cache)
    assert r.exit_code == 0 and warnings(r) == []


@pytest.mark.parametrize("where", ["cache-dir", "text-subdir"])
def test_a_cache_that_cannot_be_written_degrades_to_no_cache(run_dir, tmp_path, where):
    ref = sample(run_dir, "grinning face", tmp_path / "ref.png", tmp_path / "cache")
    assert ref.exit_code == 0
    # a file where the cache directory (or, inside a usable one, its text/ directory) belongs
    cache = tmp_path / "blocked"
    if where == "cache-dir":
        blocker = cache
    else:
        cache.mkdir()
        blocker = cache / "text"
    blocker.write_text("a file where the cache directory should be")
    r = sample(run_dir, "grinning face", tmp_path / "x.png", cache)
    assert r.exit_code == 0, r.output
    w = warnings(r)
    assert len(w) == 1 and "cannot write the caption cache shard" in w[0] and "continuing without the cache" in w[0]
    assert np.array_equal(px(tmp_path / "ref.png"), px(tmp_path / "x.png"))
    assert blocker.read_text().startswith("a file")


def test_cache_dir_is_honoured_for_emoji_models(run_dir, tmp_path):
    default = Path(os.environ["DFEDIT_CACHE"])
    before = set(default.rglob("*.safetensors"))
    mine = tmp_path / "mine"
    r = runner.invoke(dfedit_app, ["embed", "pile of poo", "--model", str(run_dir), "--cache-dir", str(mine)])
    assert r.exit_code == 0, r.output
    assert shard_of(mine, "pile of poo").is_file()
    assert set(default.rglob("*.safetensors")) == before  # nothing went to the default cache


def test_full_disk_while_writing_png_or_gif_keeps_the_old_file(run_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    out, gif = tmp_path / "keep.png", tmp_path / "keep.gif"
    assert sample(run_dir, "rocket", out, cache, "--trajectory", gif).exit_code == 0
    png_before, gif_before = out.read_bytes(), gif.read_bytes()
    for suffix, what in ((".png", "the image"), (".gif", "the trajectory")):
        full = DiskFull(monkeypatch, suffix)
        # the PNG is written before the GIF: with the GIF's disk full, the PNG goes to a new name
        png = out if suffix == ".png" else tmp_path / "new.png"
        r = sample(run_dir, "snowman", png, cache, "--trajectory", gif)
        assert r.exit_code == 1 and full.hits == 1, r.output
        err = r.stderr.strip()
        assert "\n" not in err and err.startswith(f"dfedit: error: cannot write {what} ")
        assert "no space left on the device (needs" in err and "KiB" in err
        assert out.read_bytes() == png_before and gif.read_bytes() == gif_before
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        monkeypatch.undo()
        monkeypatch.setenv("DFEDIT_CACHE", os.environ["DFEDIT_CACHE"])


# ---- the data cache --------------------------------------------------------------------------------

def _npz(tmp_path):
    return next((tmp_path / "c" / "data").glob("*.npz"))


NPZ_DAMAGE = {
    "garbage": (lambda f: f.write_bytes(os.urandom(2000)), ""),  # used to be "pickled data" from numpy
    "truncated": (lambda f: f.write_bytes(f.read_bytes()[:3000]), ""),
    "crc": (lambda f: f.write_bytes(f.read_bytes()[:2000] + bytes(b ^ 0xFF for b in f.read_bytes()[2000:2100]) +
                                    f.read_bytes()[2100:]), ""),
    "wrong-dtype": (lambda f: np.savez_compressed(f.open("wb"), images=np.zeros((3, 64, 64, 3), np.float32),
                                                  captions=np.array(["a", "b", "c"]), groups=np.array(["a", "b", "c"]),
                                                  val=np.zeros(3, bool)), "images are float32"),
    "lengths": (lambda f: np.savez_compressed(f.open("wb"), images=np.zeros((3, 64, 64, 3), np.uint8),
                                              captions=np.array(["a", "b"]), groups=np.array(["a", "b", "c"]),
                                              val=np.zeros(3, bool)), "3 images but 2 captions"),
}


@pytest.mark.parametrize("case", sorted(NPZ_DAMAGE))
def test_damaged_data_cache_is_rebuilt(tmp_path, monkeypatch, npm_tarball, capsys, case):
    monkeypatch.setenv("DFEDIT_CACHE", str(tmp_path / "c"))
    clean = datamod.load(str(npm_tarball))
    f = _npz(tmp_path)
    damage, why = NPZ_DAMAGE[case]
    damage(f)
    capsys.readouterr()
    d = datamod.load(str(npm_tarball))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the data cache") and "rebuilding it" in err[0], err
    assert why in err[0]
    assert np.array_equal(d.images, clean.images) and d.captions == clean.captions and np.array_equal(d.val, clean.val)
    d2 = datamod.load(str(npm_tarball))  # rebuilt: read back silently
    assert capsys.readouterr().err == "" and d2.captions == clean.captions


def test_data_cache_that_cannot_be_written(tmp_path, monkeypatch, npm_tarball, capsys):
    (tmp_path / "c").write_text("a file where the cache should be")
    monkeypatch.setenv("DFEDIT_CACHE", str(tmp_path / "c"))
    d = datamod.load(str(npm_tarball))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(d) == 36 and len(err) == 1 and "cannot write the data cache" in err[0]


# ---- npm downloads ---------------------------------------------------------------------------------

FAKE_NPM = """#!{python}
import base64, hashlib, json, os, signal, sys
mode, src = os.environ["FAKE_NPM_MODE"], os.environ["FAKE_NPM_SRC"]
dest = sys.argv[sys.argv.index("--pack-destination") + 1]
data = open(src, "rb").read()
name = os.path.join(dest, "emoji-datasource-google-16.0.0.tgz")
integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if mode == "killed":
    open(name, "wb").write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "truncated":
    data, integrity = data[: len(data) // 2], None
if mode == "bad-integrity":
    integrity = "sha512-" + base64.b64encode(b"x" * 64).decode()
open(name, "wb").write(data)
print(json.dumps([{{"filename": os.path.basename(name), **({{"integrity": integrity}} if integrity else {{}})}}]))
"""


@pytest.fixture
def fake_npm(tmp_path, monkeypatch, npm_tarball):
    exe = tmp_path / "npm"
    exe.write_text(FAKE_NPM.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setattr(datamod.shutil, "which", lambda name: str(exe))
    monkeypatch.setenv("DFEDIT_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("FAKE_NPM_SRC", str(npm_tarball))
    monkeypatch.setattr(datamod, "NPM_INTEGRITY", {})  # the pin is the real package's; ours is synthetic
    return lambda mode: monkeypatch.setenv("FAKE_NPM_MODE", mode)


@pytest.mark.parametrize("mode,fragment", [("killed", "npm pack emoji-datasource-google@16.0.0 failed"),
                                           ("truncated", "is damaged"),
                                           ("bad-integrity", "does not match the checksum npm reported")])
def test_a_failed_download_never_lands_under_the_final_name(tmp_path, fake_npm, npm_tarball, mode, fragment):
    fake_npm(mode)
    with pytest.raises(DfeditError, match=fragment):
        datamod.load("npm")
    npm_dir = tmp_path / "c" / "npm"
    assert list(npm_dir.iterdir()) == []  # no tarball, no temporary directory
    fake_npm("ok")
    d = datamod.load("npm")
    assert len(d) == 36 and (npm_dir / "emoji-datasource-google-16.0.0.tgz").read_bytes() == npm_tarball.read_bytes()


def test_a_damaged_cached_tarball_is_fetched_again(tmp_path, fake_npm, npm_tarball, capsys):
    npm_dir = tmp_path / "c" / "npm"
    npm_dir.mkdir(parents=True)
    # what an older version left after a kill: a truncated tarball under the final name, and a
    # temporary directory of a dead downloader
    (npm_dir / "emoji-datasource-google-16.0.0.tgz").write_bytes(npm_tarball.read_bytes()[:5000])
    (npm_dir / ".emoji-datasource-google-16.0.0.tgz.dfedit-999999999-0123456789abcdef.tmp").mkdir()
    fake_npm("ok")
    d = datamod.load("npm")
    assert len(d) == 36
    assert "the cached npm tarball" in capsys.readouterr().err
    assert sorted(p.name for p in npm_dir.iterdir()) == ["emoji-datasource-google-16.0.0.tgz"]


def test_a_download_that_differs_from_the_pin_is_refused(tmp_path, fake_npm, monkeypatch):
    monkeypatch.setattr(datamod, "NPM_INTEGRITY", {"google": "sha512-" + "A" * 86 + "=="})
    fake_npm("ok")
    with pytest.raises(DfeditError, match="not the pinned"):
        datamod.load("npm")
    assert list((tmp_path / "c" / "npm").iterdir()) == []
