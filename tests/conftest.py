import csv
import os
import sys
from pathlib import Path

import pytest
import torch

# Tests never touch the network or a GPU, and stay on one thread (two threads against another
# busy process on a 2-core machine made small forwards 100x slower).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from dfedit import testing as tiny_if  # noqa: E402
from emoji_synth import emoji_png, npm_entries, npm_files, tiny_configs, vendor_tarball, write_tarball  # noqa: E402


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


# ---- the emoji model's data and text encoder, made on the spot (no network) -------------------------
# The npm tarball has the package's layout (package/emoji.json + package/img/google/64/<unified>.png);
# the text encoder is a 1-layer BERT saved with save_pretrained and loaded back by path through the
# real transformers code path.

@pytest.fixture(scope="session", autouse=True)
def dfedit_cache(tmp_path_factory):
    """Every cache (data npz, npm tarballs, caption embeddings) in a per-session temp dir."""
    d = tmp_path_factory.mktemp("cache")
    old = os.environ.get("DFEDIT_CACHE")
    os.environ["DFEDIT_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("DFEDIT_CACHE", None)
    else:
        os.environ["DFEDIT_CACHE"] = old


@pytest.fixture(scope="session")
def npm_tarball(tmp_path_factory):
    p = tmp_path_factory.mktemp("npm") / "emoji-datasource-google-16.0.0.tgz"
    write_tarball(p, npm_files(), npm_entries())
    return p


@pytest.fixture(scope="session")
def vendor_tarballs(tmp_path_factory):
    """Synthetic emoji-datasource-{twitter,apple,facebook} tarballs: the same designs as the Google
    one, each vendor drawing them a little differently (emoji_synth.STYLES)."""
    d = tmp_path_factory.mktemp("npm-vendors")
    return {v: vendor_tarball(d, v) for v in ("twitter", "apple", "facebook")}


@pytest.fixture(scope="session")
def kaggle_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    (root / "image" / "Google").mkdir(parents=True)
    (root / "image" / "Apple").mkdir(parents=True)
    rows = []
    names = ["grinning face", "winking face", "red heart", "thumbs up", "thumbs up: light skin tone",
             "thumbs up: dark skin tone", "flag: United States", "pile of poo", "rocket", "snowman"]
    codes = ["U+1F600", "U+1F609", "U+2764", "U+1F44D", "U+1F44D U+1F3FB", "U+1F44D U+1F3FF",
             "U+1F1FA U+1F1F8", "U+1F4A9", "U+1F680", "U+2603"]
    for i, (n, c) in enumerate(zip(names, codes), start=1):
        rows.append({"#": i, "emoji": "", "unicode": c, "name": n, "Apple": "", "Google": ""})
        # Kaggle images are 72x72: exercises the resize to 64.
        (root / "image" / "Google" / f"{i}.png").write_bytes(emoji_png(n, size=72))
    (root / "image" / "Apple" / "1.png").write_bytes(emoji_png("apple", size=72))
    with open(root / "full_emoji.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="session")
def folder_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    caps = [f"shape number {i}" for i in range(20)] + ["waving hand: medium skin tone", "waving hand"]
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "caption"])
        for i, c in enumerate(caps):
            (root / f"img{i}.png").write_bytes(emoji_png(c, mode="LA" if i == 0 else "RGBA"))
            w.writerow([f"img{i}.png", c])
    return root


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A 1-layer, 32-wide BERT with a word-level vocab, saved and reloaded by path (no downloads)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    words = set("abcdefghijklmnopqrstuvwxyz0123456789:,#-!.&'")
    for e in ["grinning face", "thumbs up", "light medium dark skin tone", "flag united states keycap",
              "winking red heart pile of poo rocket snowman shape number waving hand smiling beaming"]:
        words |= set(e.split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(root)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(root)
    return root


@pytest.fixture
def corrupt_folder(tmp_path):
    (tmp_path / "ok.png").write_bytes(emoji_png("ok"))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (tmp_path / "captions.csv").write_text("file,caption\nok.png,fine\nbad.png,broken\n")
    return tmp_path


@pytest.fixture
def tiny(tiny_encoder, npm_tarball):
    return lambda **kw: tiny_configs(tiny_encoder, npm_tarball, **kw)

