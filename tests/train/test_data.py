"""Data parsing in every layout, the split rules, the cache, and bad input."""

import shutil

import numpy as np
import pytest
from emoji_synth import FACES, HANDS, emoji_png, npm_entries, npm_files, write_tarball

from dfedit.cache import cache_root
from dfedit.errors import DfeditError
from dfedit_train import data


def by_caption(d):
    return {c: i for i, c in enumerate(d.captions)}


def test_npm_tarball_captions_counts_and_white_background(npm_tarball):
    d = data.load(str(npm_tarball), use_cache=False)
    # 16 faces + 3 hands x (base + 5 tones) + flag + keycap; the Component entry is dropped.
    assert len(d) == 16 + 3 * 6 + 2
    assert d.images.shape == (len(d), 64, 64, 3) and d.images.dtype == np.uint8
    caps = by_caption(d)
    assert "grinning face" in caps
    assert "thumbs up: medium skin tone" in caps
    assert "flag: United States" in caps
    assert "keycap: #" in caps
    assert not any("skin tone" == c or c.startswith("light skin tone") for c in d.captions)
    assert len(set(d.captions)) == len(d)
    # Transparent corners composite to white, not black.
    assert (d.images[caps["grinning face"]][0, 0] == 255).all()
    # The palette-mode ("P") image decodes like the others.
    assert d.images[caps["beaming face with smiling eyes"]].std() > 10


def test_split_keeps_skin_tones_and_duplicates_together(npm_tarball):
    d = data.load(str(npm_tarball), val_fraction=0.5, use_cache=False)
    for u in HANDS:
        members = [i for i, g in enumerate(d.groups) if g == u]
        assert len(members) == 6
        assert len({bool(d.val[i]) for i in members}) == 1
    # FACES[2] and FACES[3] share one image: they must land in the same split.
    i2, i3 = d.groups.index(FACES[2]), d.groups.index(FACES[3])
    assert (d.images[i2] == d.images[i3]).all()
    assert d.val[i2] == d.val[i3]
    assert 0 < d.val.sum() < len(d)


def test_split_is_deterministic_and_roughly_the_fraction():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (400, 2, 2, 3), dtype=np.uint8)
    groups = [f"G{i}" for i in range(400)]
    v1, v2 = data.split(imgs, groups, 0.1), data.split(imgs, groups, 0.1)
    assert (v1 == v2).all()
    assert 20 <= v1.sum() <= 60


def test_unpacked_npm_dir_and_base_only(npm_tarball, tmp_path):
    shutil.unpack_archive(npm_tarball, tmp_path)
    full = data.load(str(tmp_path / "package"), use_cache=False)
    base = data.load(str(tmp_path), base_only=True, use_cache=False)
    assert len(full) == 36
    assert len(base) == 16 + 3 + 2
    assert not any("skin tone" in c for c in base.captions)


def test_cache_is_written_once_and_reused(npm_tarball):
    d1 = data.load(str(npm_tarball))
    files = list((cache_root() / "data").glob("npm-google-*.npz"))
    assert files
    d2 = data.load(str(npm_tarball))
    assert d1.captions == d2.captions and (d1.images == d2.images).all() and (d1.val == d2.val).all()


@pytest.mark.parametrize("env", ["xdg", "dfedit_cache"])
def test_one_cache_root_for_dfedit_and_the_trainer(folder_dir, tmp_path, monkeypatch, env):
    """Every cache of both packages sits below one root: $DFEDIT_CACHE (~ expanded), else
    $XDG_CACHE_HOME/dfedit, else ~/.cache/dfedit."""
    from dfedit.cache import EmbeddingCache
    from dfedit.emoji import checkpoint as ckpt
    from dfedit_train.evaluate import _default_eval_dir
    from dfedit_train.recognise import ClassifierConfig, classifier_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DFEDIT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "dfedit"
    if env == "xdg":
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        root = tmp_path / "xdg" / "dfedit"
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # $DFEDIT_CACHE wins over it
        monkeypatch.setenv("DFEDIT_CACHE", "~/mine")
        root = tmp_path / "home" / "mine"
    assert cache_root() == root
    data.load(str(folder_dir))
    assert list((root / "data").glob("folder-*.npz"))
    assert EmbeddingCache("fp").dir == root / "embeddings" / "fp"
    assert classifier_dir(ClassifierConfig()).parent == root / "recognise"
    assert _default_eval_dir(ckpt.BUILTIN["emoji"]) == root / "eval" / "builtin-emoji"


def test_kaggle_layout(kaggle_dir):
    d = data.load(str(kaggle_dir), vendor="google", use_cache=False)
    assert len(d) == 10
    assert d.images.shape[1:] == (64, 64, 3)  # 72 px resized
    assert "thumbs up: light skin tone" in d.captions
    g = {c: k for c, k in zip(d.captions, d.groups)}
    assert g["thumbs up"] == g["thumbs up: light skin tone"] == g["thumbs up: dark skin tone"] == "1F44D"
    assert len(data.load(str(kaggle_dir), vendor="google", base_only=True, use_cache=False)) == 8
    assert len(data.load(str(kaggle_dir), vendor="apple", use_cache=False)) == 1


def test_folder_layout(folder_dir):
    d = data.load(str(folder_dir), use_cache=False)
    assert len(d) == 22
    i, j = d.captions.index("waving hand"), d.captions.index("waving hand: medium skin tone")
    assert d.groups[i] == d.groups[j] and d.val[i] == d.val[j]


def test_flippable_excludes_sided_and_textual_emoji():
    f = data.flippable(["grinning face", "left arrow", "flag: France", "keycap: 1", "thumbs up", "fishing pole"])
    assert f.tolist() == [True, False, False, False, True, True]


# ---- bad input: one clear DfeditError --------------------------------------------------------

def test_missing_data_dir(tmp_path):
    with pytest.raises(DfeditError, match="does not exist"):
        data.load(str(tmp_path / "nope"))


def test_kaggle_csv_without_name_column(tmp_path):
    (tmp_path / "image" / "Google").mkdir(parents=True)
    (tmp_path / "full_emoji.csv").write_text("#,emoji,unicode,title\n1,x,U+1F600,grinning face\n")
    with pytest.raises(DfeditError, match="no 'name' column"):
        data.load(str(tmp_path), use_cache=False)


def test_folder_csv_without_caption_column(tmp_path):
    (tmp_path / "a.png").write_bytes(emoji_png("a"))
    (tmp_path / "captions.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DfeditError, match="caption column"):
        data.load(str(tmp_path), use_cache=False)


def test_corrupt_png(corrupt_folder):
    with pytest.raises(DfeditError, match="bad.png: not a valid image"):
        data.load(str(corrupt_folder), use_cache=False)


def test_corrupt_png_in_tarball(tmp_path):
    files = npm_files()
    files[FACES[0].lower() + ".png"] = b"garbage"
    write_tarball(tmp_path / "t.tgz", files, npm_entries())
    with pytest.raises(DfeditError, match="not a valid image"):
        data.load(str(tmp_path / "t.tgz"), use_cache=False)


def test_missing_npm(monkeypatch):
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(DfeditError, match="npm was not found"):
        data.load("npm", vendor="twitter")


def test_npm_pack_failure_is_one_line(monkeypatch, tmp_path):
    fake = tmp_path / "npm"
    fake.write_text("#!/bin/sh\necho 'npm ERR! 404 Not Found' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(data.shutil, "which", lambda name: str(fake))
    with pytest.raises(DfeditError, match="npm pack emoji-datasource-apple@16.0.0 failed") as e:
        data.load("npm", vendor="apple")
    assert "\n" not in str(e.value)


def test_unknown_vendor():
    with pytest.raises(DfeditError, match="unknown vendor"):
        data.load("npm", vendor="samsung")


def test_a_data_source_registered_in_the_test_is_read_by_load(tmp_path):
    """docs/architecture.md: a data source is one reader plus one registration line."""
    root = tmp_path / "toy-source"
    root.mkdir()
    (root / "colours.txt").write_text("red\ngreen\nblue\n")
    rgb = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}

    def read(path, vendor, base_only):
        names = (path / "colours.txt").read_text().split()
        return [np.full((data.STORE_SIZE, data.STORE_SIZE, 3), rgb[n], np.uint8) for n in names], names, names

    layout = data.register_layout("colours", lambda p: (p / "colours.txt").is_file(), read)
    try:
        assert [lay.name for lay in data.LAYOUTS][-1] == "folder"  # the catch-all stays last
        d = data.load(str(root), val_fraction=0.0, use_cache=False)
        assert d.captions == ["red", "green", "blue"] and d.source == "colours:toy-source (google)"
        assert (d.images[1] == (0, 255, 0)).all()
        with pytest.raises(ValueError, match="already registered"):
            data.register_layout("colours", layout.detect, read)
    finally:
        data.LAYOUTS.remove(layout)
