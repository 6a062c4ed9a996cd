"""Several drawing sets (dfedit_train/sets.py), caption variants, style conditioning: on tiny synthetic
packages in each set's own layout, built here (no download)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from emoji_synth import FACES, HANDS, TONES, emoji_png, npm_entries, npm_files
from typer.testing import CliRunner

from dfedit_train import sets
from dfedit_train.step import draw_conditioning

runner = CliRunner()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def datasource(path: Path, vendor: str) -> Path:
    """emoji-datasource-<vendor>: the synthetic entries, each vendor drawing its own pictures."""
    entries = json.loads(json.dumps(npm_entries()).replace("has_img_google", f"has_img_{vendor}"))
    files = {n: (data if vendor == "google" else emoji_png(f"{vendor}:{n}")) for n, data in npm_files().items()}
    return _tar(path, {"emoji.json": json.dumps(entries).encode(),
                       **{f"img/{vendor}/64/{n}": d for n, d in files.items()}})


def _body(key: str) -> str:
    """A distinct SVG drawing per key, asymmetric so that a mirror image differs from it."""
    h = int(hashlib.sha1(key.encode()).hexdigest()[:6], 16) % 200
    return (f'<rect x="2" y="2" width="10" height="20" fill="rgb({h},{255 - h},90)"/>'
            f'<circle cx="20" cy="16" r="{4 + h % 6}" fill="rgb(20,{h},200)"/>')


def fluent(path: Path) -> Path:
    """@iconify-json/fluent-emoji-flat: icons.json (bodies, aliases) and chars.json (code -> icon).
    The faces but FACES[15], the first hand with tones; an alias that mirrors its parent; a code
    that names no emoji-datasource entry."""
    icons, chars = {}, {}
    for u in FACES[:15]:
        icons[f"face-{u}"] = {"body": _body(u)}
        chars[u.lower()] = f"face-{u}"
    icons["hand"] = {"body": _body("hand")}
    chars[HANDS[0].lower()] = "hand"
    for t in TONES:
        icons[f"hand-{t}"] = {"body": _body(t)}
        chars[f"{HANDS[0]}-{t}".lower()] = f"hand-{t}"
    chars[HANDS[1].lower()] = "hand-mirrored"  # an alias: the first hand, flipped
    chars["1f9ff"] = "nazar"  # no such entry in the synthetic emoji.json
    icons["nazar"] = {"body": _body("nazar")}
    doc = {"prefix": "fluent-emoji-flat", "icons": icons, "width": 32, "height": 32,
           "aliases": {"hand-mirrored": {"parent": "hand", "hFlip": True}}}
    return _tar(path, {"icons.json": json.dumps(doc).encode(), "chars.json": json.dumps(chars).encode()})


def emojibase(path: Path) -> Path:
    data = [{"label": "x", "hexcode": u, "tags": ["happy", "smile", f"tag{u[-2:]}"]} for u in FACES]
    data += [{"label": "hand", "hexcode": u, "tags": ["hand", "wave", "palm"]} for u in HANDS]
    return _tar(path, {"en/data.json": json.dumps(data).encode()})


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """The four packages, handed to the trainer in place of the npm downloads."""
    npm = tmp_path / "npm"
    npm.mkdir(parents=True, exist_ok=True)
    got = {"google": datasource(npm / "emoji-datasource-google-16.0.0.tgz", "google"),
            "twitter": datasource(npm / "emoji-datasource-twitter-16.0.0.tgz", "twitter"),
            "fluent": fluent(npm / "iconify-json-fluent-emoji-flat-1.2.6.tgz"),
            "emojibase": emojibase(npm / "emojibase-data-16.0.3.tgz")}
    monkeypatch.setattr(sets, "_sources", lambda names: {n: got[n] for n in names})
    monkeypatch.setattr(sets, "fetch_emojibase", lambda: got["emojibase"])
    return got


def test_normalise_code_makes_every_sets_spelling_one_key():
    assert sets.normalise_code("1f44d-1f3fd") == sets.normalise_code("1F44D-1F3FD") == "1F44D-1F3FD"
    assert sets.normalise_code("2764-FE0F") == "2764"
    assert sets.normalise_code("0023-fe0f-20e3") == "0023-20E3"


def test_the_fluent_package_parses_onto_emoji_datasource(packages):
    entries = npm_entries()
    rows = sets.Rows()
    unmatched = sets.read_fluent(packages["fluent"], sets.catalogue(entries, base_only=False), rows)
    assert unmatched == 1  # the nazar amulet names no entry
    assert len(rows.images) == 15 + 1 + 5 + 1 and set(rows.styles) == {"fluent"}
    hand = rows.codes.index(HANDS[0])
    assert rows.tones[rows.codes.index(f"{HANDS[0]}-{TONES[2]}")] == TONES[2]
    assert rows.captions[rows.codes.index(f"{HANDS[0]}-{TONES[2]}")].endswith(": medium skin tone")
    mirrored = rows.codes.index(HANDS[1])
    flipped = np.abs(rows.images[mirrored].astype(int) - rows.images[hand][:, ::-1])  # the alias is drawn flipped
    assert flipped.mean() < 1 and np.abs(rows.images[mirrored].astype(int) - rows.images[hand]).mean() > 10
    assert rows.images[hand].dtype == np.uint8 and rows.images[hand].shape == (64, 64, 3)
    assert (rows.images[hand][0, 0] == 255).all()  # composited on white


def test_load_sets_maps_every_set_onto_one_code_and_caption(packages):
    ms = sets.load_sets(("google", "twitter", "fluent"), paths={k: packages[k] for k in ("google", "twitter", "fluent")},
                        emojibase=packages["emojibase"])
    assert Counter(ms.styles) == {"google": 36, "twitter": 36, "fluent": 22}  # 16 + 3x6 + flag + keycap
    by_code: dict[str, set] = {}
    for c, cap, g in zip(ms.codes, ms.captions, ms.groups):
        by_code.setdefault(c, set()).add((cap, g))
    assert all(len(v) == 1 for v in by_code.values())  # one caption and one group per emoji, whoever drew it
    i = ms.codes.index(FACES[0])
    assert ms.variants[i][0] == ms.captions[i]
    assert f"{ms.captions[i]} emoji" in ms.variants[i] and f"an emoji of {ms.captions[i]}" in ms.variants[i]
    assert any("smile" in v for v in ms.variants[i])  # the keywords
    j = ms.codes.index(f"{HANDS[0]}-{TONES[4]}")
    assert all("dark skin tone" in v for v in ms.variants[j])  # a tone variant keeps its tone in every caption
    again = sets.load_sets(("google", "twitter", "fluent"), paths={k: packages[k] for k in ("google", "twitter", "fluent")},
                           emojibase=packages["emojibase"])  # from the cache
    assert again.captions == ms.captions and np.array_equal(again.images, ms.images)


def test_held_out_pairs_are_pairs_whose_parts_are_trained(packages):
    ms = sets.load_sets(("google", "twitter", "fluent"), paths={k: packages[k] for k in ("google", "twitter", "fluent")},
                        emojibase=packages["emojibase"], use_cache=False)
    # three hands share the tones: at this size "unseen" would take a whole hand, so test it apart
    unseen = sets.assign_splits(ms, 0.05, 0.0)
    assert set(unseen) == {"", "unseen"}
    assert not {g for g, s in zip(ms.groups, unseen) if s} & {g for g, s in zip(ms.groups, unseen) if not s}
    split = sets.assign_splits(ms, 0.0, 0.3)
    got = Counter(split)
    assert got["tone-pair"] and got["style-pair"]
    train = [i for i, s in enumerate(split) if not s]
    trained_groups = {ms.groups[i] for i in train}
    trained_tones = {ms.tones[i] for i in train if ms.tones[i]}
    for i, s in enumerate(split):
        if s == "unseen":
            assert ms.groups[i] not in trained_groups
        elif s == "tone-pair":
            assert ms.groups[i] in trained_groups and ms.tones[i] in trained_tones
            # held out in every set that draws it
            assert all(split[k] for k in range(len(ms)) if ms.codes[k] == ms.codes[i])
        elif s == "style-pair":
            assert any(ms.groups[k] == ms.groups[i] and ms.styles[k] != ms.styles[i] for k in train)
    assert sets.assign_splits(ms, 0.0, 0.3) == split  # by hash: the same every time
    assert set(sets.assign_splits(ms, 0.0, 0.0)) == {""}


def test_tone_variants_share_their_base_emojis_weight(packages):
    ms = sets.load_sets(("google",), paths={"google": packages["google"]}, emojibase=packages["emojibase"],
                        use_cache=False)
    w = sets.row_weights(ms, range(len(ms)), tone_share=1.0)
    hand = [i for i, g in enumerate(ms.groups) if g == HANDS[0]]
    assert sum(w[i] for i in hand if ms.tones[i]) == pytest.approx(1.0)
    assert w[ms.codes.index(FACES[0])] == 1.0
    assert sets.row_weights(ms, range(len(ms)), tone_share=0.5)[hand[1]] == pytest.approx(0.1)


def _variant_data(n=64, k=4):
    vtext = torch.randn(n * k, 3, 8)
    vmask = torch.ones(n * k, 3, dtype=torch.bool)
    return {"vtext": vtext, "vmask": vmask, "vidx": torch.arange(n * k).view(n, k), "vcount": torch.full((n,), k),
            "name_share": 0.5, "style": torch.randint(1, 4, (n,))}


def test_caption_variants_are_drawn_reproducibly_from_the_seed():
    D = _variant_data()
    idx = torch.arange(64)
    text, mask = torch.zeros(64, 3, 8), torch.ones(64, 3, dtype=torch.bool)
    mask[:5] = False  # CFG dropout: the null prompt
    a = draw_conditioning(D, idx, torch.Generator().manual_seed(1), text, mask, 0.3)
    b = draw_conditioning(D, idx, torch.Generator().manual_seed(1), text, mask, 0.3)
    c = draw_conditioning(D, idx, torch.Generator().manual_seed(2), text, mask, 0.3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and not torch.equal(a[0], c[0])
    assert not a[1][:5].any() and a[1][5:].all()  # the null prompt stays null
    # which variant: the name about half the time, each other one about a sixth
    cols = []
    for s in range(40):
        t, _, _ = draw_conditioning(D, idx, torch.Generator().manual_seed(s), text, mask, 0.3)
        rows = (t[:, None] == D["vtext"].view(64, 4, 3, 8)).flatten(2).all(2).float().argmax(1)
        cols += rows.tolist()
    share = np.bincount(cols, minlength=4) / len(cols)
    assert abs(share[0] - 0.5) < 0.05 and all(abs(s - 1 / 6) < 0.04 for s in share[1:])
    style = torch.cat([draw_conditioning(D, idx, torch.Generator().manual_seed(s), text, mask, 0.3)[2]
                       for s in range(40)])
    assert abs((style == 0).float().mean().item() - 0.3) < 0.05  # style dropout to "any style"


def test_the_style_label_changes_the_networks_output():
    from dfedit.emoji.config import ModelConfig
    from dfedit.emoji.unet import UNet

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, channels=(16, 32), num_res_blocks=1, self_attn=(False, True),
                      cross_attn=(False, True), head_dim=16, text_dim=8, styles=("google", "twitter", "fluent"))
    net = UNet(cfg).eval()
    for p in net.parameters():  # a trained net: no zero-initialised output layers
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([500, 500])
    text, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        outs = [net(x, t, text, mask, style=torch.tensor([s, s])) for s in range(4)]
        assert torch.equal(net(x, t, text, mask), outs[0])  # no style = "any style"
    for a in range(4):
        for b in range(a + 1, 4):
            assert (outs[a] - outs[b]).abs().max() > 1e-3, (a, b)
    fresh = UNet(cfg).eval()  # a new style embedding starts at zero: every style gives the same output
    with torch.no_grad():
        assert torch.equal(fresh(x, t, text, mask, style=torch.tensor([2, 2])), fresh(x, t, text, mask))


def test_style_is_refused_by_a_model_without_styles(tmp_path):
    from dfedit.cli import app

    r = runner.invoke(app, ["sample", "grinning face", "--model", "emoji", "--style", "google",
                            "-o", str(tmp_path / "a.png")])
    assert r.exit_code == 1 and not (tmp_path / "a.png").exists()
    line = r.output.strip()
    assert "\n" not in line and "trained without styles" in line and "--style" in line, r.output


def test_a_tiny_run_on_several_sets_trains_and_samples_in_each_style(packages, tiny_encoder, tmp_path):
    from dfedit.cli import app as dfedit_app
    from dfedit.outputs import read_metadata
    from dfedit_train.cli import app as train_app

    out = tmp_path / "run"
    r = runner.invoke(train_app, ["emoji", "--preset", "tiny", "--sets", "google,twitter,fluent", "--text-encoder",
                                  str(tiny_encoder), "--max-length", "12", "--out", str(out), "--quiet",
                                  "--sample-every", "0", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(next((out / "checkpoints").glob("step-*/config.json")).read_text())
    assert cfg["model"]["styles"] == ["google", "twitter", "fluent"] and cfg["data"]["caption_variants"]
    assert cfg["diffusion"]["style_dropout"] == 0.3 and cfg["data"]["pair_holdout"] == 0.1
    for style in ("google", "fluent"):
        png = tmp_path / f"{style}.png"
        r = runner.invoke(dfedit_app, ["sample", "grinning face", "--model", str(out), "--style", style, "--stride",
                                       "200", "-o", str(png), "--quiet"])
        assert r.exit_code == 0, r.output
        assert read_metadata(png)["style"] == style
    r = runner.invoke(dfedit_app, ["sample", "x", "--model", str(out), "--style", "apple", "-o", str(tmp_path / "b.png")])
    assert r.exit_code == 1 and "google, twitter, fluent" in r.output
    r = runner.invoke(train_app, ["emoji", "--preset", "tiny", "--sets", "google,openmoji", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "--sets takes drawing sets from google, twitter, fluent" in r.output


# ---- the generalisation table ----------------------------------------------------------------------

class _Den:
    sample_size = 16
    default_cfg = 3.0
    styles = ("google", "twitter", "fluent")

    def set_style(self, style):
        self.style = style


def _table(packages):
    ms = sets.load_sets(("google", "twitter", "fluent"), paths={k: packages[k] for k in ("google", "twitter", "fluent")},
                        emojibase=packages["emojibase"], use_cache=False)
    return ms, sets.assign_splits(ms, 0.0, 0.3)


def _judge(ms):
    """A tiny judge on the table's own drawings (the real one never sees a training set; here only
    the scoring is under test)."""
    from dfedit_train import recognise as rec
    from dfedit_train.data import EmojiData

    judge = {s: EmojiData(ms.images[[i for i, st in enumerate(ms.styles) if st == s]],
                          [c for c, st in zip(ms.captions, ms.styles) if st == s],
                          [g for g, st in zip(ms.groups, ms.styles) if st == s],
                          np.zeros(sum(st == s for st in ms.styles), bool), s) for s in ("google", "twitter")}
    cfg = rec.ClassifierConfig(resolution=16, width=8, epochs=30, batch_size=32, lr=1e-2, val_fraction=0.0)
    return rec.train_classifier(cfg, judge, progress=False)


def _drawer(ms, pick):
    """A fake model: for each caption, the table's drawing that pick(rows, style, seed) chooses."""
    from dfedit_train.data import images_to_tensor

    rows_of: dict[str, list[int]] = {}
    for i, c in enumerate(ms.captions):
        rows_of.setdefault(c, []).append(i)

    def fn(den, captions, seed, style):
        out = []
        for j, c in enumerate(captions):
            rows = rows_of.get(c) or rows_of[ms.captions[0]]
            out.append(pick(rows, style, seed + j))
        return images_to_tensor(ms.images[out], 16)
    return fn


def test_the_generalisation_table_scores_perfect_blank_and_wrong_tone_models(packages):
    from dfedit_train import generalise

    ms, split = _table(packages)
    judge = _judge(ms)
    para = [("a happy thing", ms.captions[0])]

    def perfect(rows, style, seed):  # the asked style's drawing; no style: a trained one chosen by the seed
        mine = [i for i in rows if ms.styles[i] == style] if style else [i for i in rows if not split[i]]
        return (mine or rows)[seed % len(mine or rows)]

    kw = dict(classifier=judge, n_train=8, n_pairs=8, n_unseen=0, n_diversity=6, n_seeds=3, progress=False,
              paraphrases=para)
    good = generalise.evaluate(_Den(), ms, split, sample_fn=_drawer(ms, perfect), **kw)
    for s in ("google", "twitter"):
        assert good["rows"][f"train ({s})"]["ratio_top5"] == pytest.approx(1.0)  # as recognisable as the real ones
    assert good["rows"]["tone-pair"]["tone_accuracy"] == 1.0
    assert good["diversity"]["diversity"] > 0.2  # the seeds give different sets' drawings
    one = generalise.evaluate(_Den(), ms, split, sample_fn=_drawer(ms, lambda rows, style, seed: ([i for i in rows if not split[i]] or rows)[0]), **kw)
    assert one["diversity"]["diversity"] == 0.0 and one["diversity"]["copies"]["copy"] == 1.0  # one drawing by heart
    assert good["diversity"]["copies"]["copy"] > 0.9  # ... which are training images: copies

    blank = generalise.evaluate(_Den(), ms, split, sample_fn=lambda den, caps, seed, st: torch.ones(len(caps), 3, 16, 16),
                                **kw)
    assert blank["rows"]["train (google)"]["top5"] <= 0.5 and blank["diversity"]["diversity"] == 0.0

    def wrong_tone(rows, style, seed):  # the right emoji in the next tone
        i = rows[0]
        if not ms.tones[i]:
            return i
        same = [k for k in range(len(ms)) if ms.groups[k] == ms.groups[i] and ms.tones[k] and ms.tones[k] != ms.tones[i]
                and ms.styles[k] == ms.styles[i]]
        return same[0]
    bad = generalise.evaluate(_Den(), ms, split, sample_fn=_drawer(ms, wrong_tone), **kw)
    assert bad["rows"]["tone-pair"]["tone_accuracy"] == 0.0
    assert "tone right 0.00" in generalise.table(bad)


def test_no_paraphrase_equals_a_caption_variant(packages):
    """The frozen paraphrases measure captions never trained on: none may be one of the variants
    (on the real packages: 210 paraphrases against 20,782 variants, none equal, checked when the
    sets were built)."""
    from dfedit_train import recognise as rec

    ms = sets.load_sets(("google", "twitter", "fluent"), paths={k: packages[k] for k in ("google", "twitter", "fluent")},
                        emojibase=packages["emojibase"], use_cache=False)
    variants = {v.lower() for vs in ms.variants for v in vs}
    assert not [p for p, _ in rec.load_paraphrases() if p.lower() in variants]
    planted = [(ms.variants[0][1], ms.captions[0])]  # "X emoji": a variant, so not a paraphrase
    assert [p for p, _ in planted if p.lower() in variants]


def test_recognise_on_a_several_sets_run_prints_the_table_and_writes_the_sheet(packages, tiny_encoder, tmp_path,
                                                                                 monkeypatch):
    from dfedit_train import recognise as rec
    from dfedit_train.cli import app as train_app

    out = tmp_path / "run"
    r = runner.invoke(train_app, ["emoji", "--preset", "tiny", "--sets", "google,twitter,fluent", "--text-encoder",
                                  str(tiny_encoder), "--max-length", "12", "--out", str(out), "--quiet",
                                  "--sample-every", "0", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    ms, _ = _table(packages)
    judge = _judge(ms)
    monkeypatch.setattr(rec, "load_classifier", lambda *a, **k: judge)  # no Apple/Facebook download
    r = runner.invoke(train_app, ["recognise", str(out), "--n-train", "3", "--pairs", "3", "--n-heldout", "0",
                                  "--diversity-captions", "2", "--seeds", "2", "--stride", "500", "--quiet",
                                  "--out", str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    for row in ("train (google)", "train (fluent)", "train (any style)", "style-pair", "paraphrase", "diversity"):
        assert row in r.stdout, r.stdout
    got = json.loads((tmp_path / "eval" / "eval.json").read_text())["generalise"]
    assert got["styles"] == ["google", "twitter", "fluent"] and (tmp_path / "eval" / "generalise.png").is_file()
