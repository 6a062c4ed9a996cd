"""Fixtures for tests/train: synthetic data in every supported layout and a tiny text encoder.

Nothing here touches the network: the npm tarball is built locally with the package's layout
(package/emoji.json + package/img/google/64/<unified>.png), the text encoder is a 1-layer BERT
saved with save_pretrained and loaded back by path through the real transformers code path.
"""

from __future__ import annotations

import csv
import os

import pytest
import torch
from emoji_synth import emoji_png, npm_entries, npm_files, tiny_configs, vendor_tarball, write_tarball

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)


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

