"""Helpers every test file may import (`from helpers import ...`; conftest puts tests/ on the path).
Fixtures live in conftest.py; these are plain functions and classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dfedit.files


def pixels(path) -> np.ndarray:
    """An image file's RGB pixels as ints (so differences never wrap around as uint8 would)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def ok(res) -> tuple[str, str]:
    """A `cli` fixture result (code, stdout, stderr) that succeeded without a traceback: (stdout, stderr)."""
    code, out, err = res
    assert code == 0, err
    assert "Traceback" not in out + err
    return out, err


def one_line_error(r, fragment: str, prog: str = "dfedit-train", code: int = 1) -> str:
    """A CliRunner result whose whole stderr is one `PROG: error: ...` line containing `fragment`."""
    assert r.exit_code == code, r.output
    err = r.stderr.strip()
    assert err.startswith(f"{prog}: error: ") and "\n" not in err and "Traceback" not in r.output + err, err
    assert fragment in err, err
    return err


def last_line_error(r, fragment: str, prog: str = "dfedit-train", code: int = 1) -> str:
    """A CliRunner result that ends in one `PROG: error: ...` line containing `fragment`; notices
    (a resumed run, a repaired cache) may come before it."""
    assert r.exit_code == code, r.output
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"{prog}: error: ") and "Traceback" not in r.output, r.output
    assert fragment in err, err
    return err


def clean_image(size: int = 16, seed: int = 3) -> torch.Tensor:
    """(1, 3, size, size) inside [-1, 1], so thresholding leaves it alone: what oracles return.
    Seeds torch's global generator, as the tests that use it always have (their noise follows it)."""
    torch.manual_seed(seed)
    return torch.rand(1, 3, size, size) * 1.8 - 0.9


class OracleDenoiser:
    """Knows the clean image: returns the exact noise eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).

    With it every edit becomes an exact check (the loop must return x0). Implements the Denoiser
    protocol with a learned-range variance of zeros (the midpoint of IF's range)."""

    def __init__(self, x0: torch.Tensor, schedule, learned_variance: bool = True):
        self.x0, self.schedule = x0, schedule
        self.sample_size, self.channels = x0.shape[-1], x0.shape[1]
        self.name, self.device, self.dtype = "oracle", x0.device, x0.dtype
        self.learned_variance = learned_variance
        self.calls = []
        self.prompt_encoder = None

    def __call__(self, x, t, cond):
        self.calls.append((t, x.shape[0]))
        a = self.schedule.alphas_cumprod[t]
        x0 = self.x0.expand_as(x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps, (torch.zeros_like(x) if self.learned_variance else None)


class DiskFull:
    """Plant ENOSPC in dfedit's one file writer: files whose name matches get `room` bytes, then the
    write fails as a full disk does (the partial bytes are really written)."""

    def __init__(self, monkeypatch, match, room=100):
        self.match, self.room, self.hits = match, room, 0
        real = dfedit.files._file

        def fake_open(fd, path):
            f = real(fd, path)
            if self.match in Path(path).name:
                self.hits += 1
                write = f.write

                def limited(data):
                    write(data[: self.room])
                    raise OSError(28, "No space left on device")
                f.write = limited
            return f

        monkeypatch.setattr(dfedit.files, "_file", fake_open)
