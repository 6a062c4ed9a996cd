import os
import sys
from pathlib import Path

import pytest
import torch

# Tests never touch the network or a GPU, and stay on one thread (two threads against another
# busy process on a 2-core machine made small forwards 100x slower).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from dfedit import testing as tiny_if  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """(stage I dir, stage II dir): tiny IF checkpoints saved with save_pretrained (16 px -> 32 px)."""
    return tiny_if.save_tiny_if(tmp_path_factory.mktemp("models"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own embedding cache, so cache hits never leak between tests."""
    monkeypatch.setenv("DFEDIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def photo(tmp_path) -> Path:
    """A non-square RGB photo with structure (so noisy / denoised tiles differ visibly, and a centre
    crop has something to cut); test files that need another input define their own."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    a = np.zeros((24, 40, 3), np.uint8)
    a[:, :, 0] = np.linspace(0, 255, 40, dtype=np.uint8)
    a[:, :, 1] = np.linspace(0, 255, 24, dtype=np.uint8)[:, None]
    a[:, :, 2] = rng.integers(0, 256, (24, 40), dtype=np.uint8)
    p = tmp_path / "photo.png"
    Image.fromarray(a).save(p)
    return p


@pytest.fixture
def if_schedule():
    from dfedit.schedule import NoiseSchedule
    return NoiseSchedule.from_config(dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000,
                                          prediction_type="epsilon", variance_type="learned_range",
                                          thresholding=True, dynamic_thresholding_ratio=0.95,
                                          sample_max_value=1.5, clip_sample=True))


@pytest.fixture
def cli():
    """Invoke the real Typer app in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner
    from dfedit.cli import app

    runner = CliRunner()

    def run(*args):
        r = runner.invoke(app, [str(a) for a in args])
        if r.exception and not isinstance(r.exception, SystemExit):
            raise r.exception
        return r.exit_code, r.stdout, r.stderr

    return run


def machine_line() -> str:
    """Which CPU and which torch kernels ran: float results differ in the last bits between them."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        import platform

        cpu = platform.processor() or cpu
    return (f"cpu: {cpu}, {os.cpu_count()} logical cores; torch {torch.__version__}, kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)")


def pytest_report_header(config):
    return machine_line()


def pytest_terminal_summary(terminalreporter):
    # also under -q (CI's command), which hides the header
    terminalreporter.write_line(machine_line())
