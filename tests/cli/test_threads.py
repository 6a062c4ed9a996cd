"""`dfedit --threads N` sets torch's CPU threads before any work, on every command; without it the
machine's default (1 on 2 CPUs or fewer, where a second thread thrashed: docs/benchmarks.md)."""

import numpy as np
import pytest
import torch
from PIL import Image

from dfedit import devices


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def photo(tmp_path):
    p = tmp_path / "p.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(p)
    return p


def test_threads_1_sets_torch_to_one_thread(cli, tmp_path, photo):
    torch.set_num_threads(2)
    code, _, err = cli("noise", photo, "--model", "emoji", "--threads", "1", "--quiet", "-o", tmp_path / "n.png")
    assert code == 0, err
    assert torch.get_num_threads() == 1


def test_threads_on_a_generating_command(cli, tmp_path):
    torch.set_num_threads(1)
    code, _, err = cli("sample", "fire", "--model", "emoji", "--steps", "1", "--threads", "2", "--quiet",
                       "--no-display", "-o", tmp_path / "s.png")
    assert code == 0, err
    assert torch.get_num_threads() == 2


def test_every_command_takes_threads():
    import typer.main

    from dfedit.cli import app
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        assert "--threads" in [o for p in cmd.params for o in p.opts], name


def test_the_default_is_one_thread_on_two_cpus(monkeypatch):
    monkeypatch.setattr(devices, "cpu_count", lambda: 2)
    assert devices.default_threads() == 1
    monkeypatch.setattr(devices, "cpu_count", lambda: 16)
    monkeypatch.setattr(devices, "_TORCH_THREADS", 8)
    assert devices.default_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    assert devices.default_threads() == 3


def test_the_default_applies_without_the_option(cli, tmp_path, photo, monkeypatch):
    monkeypatch.setattr(devices, "cpu_count", lambda: 2)
    torch.set_num_threads(2)
    code, _, err = cli("noise", photo, "--model", "emoji", "--quiet", "-o", tmp_path / "n.png")
    assert code == 0, err
    assert torch.get_num_threads() == 1


def test_threads_0_is_one_line(cli, tmp_path):
    code, out, err = cli("sample", "fire", "--model", "emoji", "--threads", "0", "-o", tmp_path / "s.png")
    assert code != 0 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--threads" in lines[0], err
    assert not (tmp_path / "s.png").exists()
