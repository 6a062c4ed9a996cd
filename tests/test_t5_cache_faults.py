"""The T5 prompt-embedding cache with planted faults: every damaged entry is reported in one
line, recomputed, and the image equals a clean run's; a cache that cannot be written degrades to
no cache (one notice) instead of aborting the command."""

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dfedit import DFEdit
from dfedit.cache import tensor_digest


def _api(p1, cache):
    return DFEdit(model=str(p1), stage2=str(p1), device="cpu", quiet=True, cache_dir=str(cache))


def _entry(p1, cache, prompt):
    return _api(p1, cache)._text_encoder().cache._path(prompt)


def _rewrite(f, fn):
    with safe_open(str(f), "pt") as h:
        meta, t = dict(h.metadata()), {k: h.get_tensor(k) for k in h.keys()}
    t, meta = fn(t, meta)
    save_file(t, str(f), metadata=meta)


def _rot(f):
    b = bytearray(f.read_bytes())
    start = 8 + int.from_bytes(b[:8], "little")
    for i in range(start, len(b), 16):
        b[i] ^= 0x01  # lowest mantissa bit: still finite, only the checksum can tell
    f.write_bytes(bytes(b))


DAMAGE = {
    "rotten": (_rot, "its checksum does not match its data"),
    "nan": (lambda f: _rewrite(f, lambda t, m: ({"text": torch.full_like(t["text"], float("nan"))},
                                                {"prompt": m["prompt"]})), "NaN or infinite"),
    "other-prompt": (lambda f: _rewrite(f, lambda t, m: (t, {**m, "prompt": "something else"})),
                     "it belongs to another prompt"),
    "wrong-shape": (lambda f: _rewrite(f, lambda t, m: ({"text": t["text"][:, :8].contiguous()},
                                                        {"prompt": m["prompt"]})), "the text encoder gives (77, 32)"),
    "truncated": (lambda f: f.write_bytes(f.read_bytes()[:50]), "unreadable"),
    "directory": (lambda f: (f.unlink(), f.mkdir()), "unreadable"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_t5_entry_is_recomputed_and_the_image_is_unchanged(tiny_models, tmp_path, capsys, case):
    p1, _ = tiny_models
    cache = tmp_path / "cache"
    clean = _api(p1, cache).sample("a dog", seed=1, upscale=False, stride=90).images
    f = _entry(p1, cache, "a dog")
    with safe_open(str(f), "pt") as h:  # entries carry a checksum of their tensors
        assert h.metadata()["sha256"] == tensor_digest({"text": h.get_tensor("text")})
    damage, why = DAMAGE[case]
    damage(f)
    capsys.readouterr()
    again = _api(p1, cache).sample("a dog", seed=1, upscale=False, stride=90).images
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(err) == 1 and "is damaged" in err[0] and why in err[0] and "recomputing" in err[0], err
    assert torch.equal(clean, again)
    assert f.is_file()  # rebuilt in place
    _api(p1, cache).sample("a dog", seed=1, upscale=False, stride=90)
    assert "warning" not in capsys.readouterr().err


def test_unwritable_t5_cache_degrades_to_no_cache(tiny_models, tmp_path, capsys):
    p1, _ = tiny_models
    ref = _api(p1, tmp_path / "ok").sample("a cat", seed=2, upscale=False, stride=90).images
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    capsys.readouterr()
    got = _api(p1, blocker).sample("a cat", seed=2, upscale=False, stride=90).images
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "cannot write the embedding cache entry" in err[0] and "without the cache" in err[0]
    assert torch.equal(ref, got) and blocker.read_text() == "not a directory"


def test_stale_temporaries_of_dead_writers_are_removed(tiny_models, tmp_path):
    p1, _ = tiny_models
    cache = tmp_path / "cache"
    _api(p1, cache).embed(["first"])
    d = _entry(p1, cache, "first").parent
    dead = d / ".x.safetensors.dfedit-999999999-0123456789abcdef.tmp"
    dead.write_bytes(b"half an entry")
    live = d / f".y.safetensors.dfedit-{os.getpid()}-0123456789abcdef.tmp"
    live.write_bytes(b"being written")
    _api(p1, cache).embed(["second"])
    assert not dead.exists() and live.exists()
