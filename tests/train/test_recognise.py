"""The recognisability metric: a judge trained on another vendor's drawings, a stratified prompt set,
ratios to the real images, Gu et al.'s recall. A tiny judge from a handful of synthetic images."""

import json

import numpy as np
import pytest
import torch

from dfedit_train import data as datamod
from dfedit_train import recognise as rec
from dfedit_train.data import EmojiData


def other_vendor(d: EmojiData) -> EmojiData:
    """The same emoji drawn slightly differently: shifted by two pixels and a little darker."""
    imgs = np.roll(d.images, 2, axis=2).astype(np.int16) - 12
    return EmojiData(imgs.clip(0, 255).astype(np.uint8), d.captions, d.groups, d.val, "other vendor")


@pytest.fixture(scope="module")
def google(npm_tarball):
    return datamod.load(str(npm_tarball), "google")


@pytest.fixture(scope="module")
def judge(google):
    cfg = rec.ClassifierConfig(resolution=16, width=8, epochs=30, batch_size=32, lr=1e-2)
    return rec.train_classifier(cfg, other_vendor(google), progress=False)


class FakeDen:
    sample_size = 16
    default_cfg = 3.0


def paraphrases(d):
    return [("a happy thing", d.captions[0]), ("another thing", d.captions[5])]


def run(google, judge, npm_tarball, fn, **kw):
    cats = rec.categories(npm_tarball)
    return rec.recognisability(FakeDen(), google, ~google.val, cats, n_train=12, n_heldout=12, progress=False,
                               classifier=judge, sample_fn=fn, paraphrases=paraphrases(google), **kw)


def real_images(google):
    """A 'model' that draws exactly the Google image of each caption it is given."""
    where = {c: i for i, c in enumerate(google.captions)}
    para = dict(paraphrases(google))

    def fn(den, captions, seed):
        rows = [where[para.get(c, c)] for c in captions]
        return rec.images_to_tensor(google.images[rows], 16)
    return fn


def test_judge_learns_the_other_vendor_and_transfers(google, judge):
    net, classes = judge
    assert classes == sorted(set(google.groups))  # skin tones folded into their base emoji
    idx = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([idx[g] for g in google.groups])
    r = rec.ranks(net, rec.images_to_tensor(google.images, 16), y)
    assert (r < 5).float().mean() > 0.8  # it recognises the Google drawings it never saw


def test_a_perfect_model_scores_one_and_is_recalled(google, judge, npm_tarball):
    r = run(google, judge, npm_tarball, real_images(google))
    for split in ("train", "held-out", "paraphrase"):
        row = r["rows"][split]
        assert row["top5"] == row["real_top5"] and row["ratio_top5"] == pytest.approx(1.0)
    assert r["rows"]["train"]["recall_gu"] == 1.0
    assert r["_images"].shape[-1] == 16 and len(r["samples"]) == len(r["_prompts"])


def test_wrong_or_blank_drawings_score_low(google, judge, npm_tarball):
    perfect = real_images(google)

    def shifted(den, captions, seed):  # every caption gets its neighbour's drawing
        x = perfect(den, captions, seed)
        return torch.roll(x, 1, dims=0)
    r = run(google, judge, npm_tarball, shifted)
    assert r["rows"]["train"]["top1"] < 0.3
    # Recalled only where the neighbour's drawing is an exact copy (the synthetic set has one).
    train = [i for i, p in enumerate(r["_prompts"]) if p.split == "train"]
    own = rec.images_to_tensor(google.images[[r["_prompts"][i].row for i in train]], 16)
    same = (r["_images"][train] == own).flatten(1).all(1).float().mean().item()
    assert same < 0.1 and r["rows"]["train"]["recall_gu"] == pytest.approx(same)
    blank = run(google, judge, npm_tarball, lambda den, caps, seed: torch.ones(len(caps), 3, 16, 16))
    row = blank["rows"]["train"]
    # One constant drawing is one class: it can be right for at most one caption at top-1 and five
    # at top-5, whatever the judge (the tiny judge's own real top-1 varies with the CPU's kernels).
    assert row["recall_gu"] == 0.0 and row["top1"] <= 1 / row["n"] + 1e-6 and row["top5"] <= 5 / row["n"] + 1e-6
    assert row["ratio_top5"] < 0.3


def test_recall_criterion_is_one_third_of_the_nearest_other():
    bank = torch.zeros(3, 1, 1, 3)
    bank[1, ..., 0] = 3.0
    bank[2, ..., 1] = 3.0
    own = bank[:1]
    near = torch.tensor([[[[0.9, 0.0, 0.0]]]])  # 0.9 from its own, 2.1 from the next: 0.9 > 2.1 / 3
    nearer = torch.tensor([[[[0.6, 0.0, 0.0]]]])  # 0.6 < 2.4 / 3
    assert not rec.recall_gu(near, own, bank, torch.tensor([0])).item()
    assert rec.recall_gu(nearer, own, bank, torch.tensor([0])).item()


def test_prompt_set_is_stratified_fixed_and_base_only(google, npm_tarball):
    cats = rec.categories(npm_tarball)
    a = rec.prompt_set(google, ~google.val, cats, n_train=6, n_heldout=0, seed=0, paraphrases=[])
    b = rec.prompt_set(google, ~google.val, cats, n_train=6, n_heldout=0, seed=0, paraphrases=[])
    assert [p.caption for p in a] == [p.caption for p in b]
    assert all("skin tone" not in p.caption for p in a) and len(a) == 6
    train_cats = {cats[g] for g, v, c in zip(google.groups, google.val, google.captions)
                  if not v and datamod.base_of_caption(c) == c}
    assert {p.category for p in a} == train_cats  # every category at least once
    assert {p.split for p in a} == {"train"}
    # Paraphrases of emoji this data set does not have are skipped (models trained on other data).
    kept = rec.prompt_set(google, ~google.val, cats, n_train=0, n_heldout=0,
                          paraphrases=[("x", "no such emoji"), ("y", google.captions[0])])
    assert [(p.caption, p.split) for p in kept] == [("y", "paraphrase")]


def test_stratified_allocation_is_proportional():
    rows = list(range(100))
    cats = ["a"] * 70 + ["b"] * 25 + ["c"] * 5
    pick = rec._stratified(rows, cats, 20, np.random.default_rng(0))
    got = [cats[r] for r in pick]
    assert (got.count("a"), got.count("b"), got.count("c")) == (14, 5, 1)


def test_classifier_is_cached_as_safetensors(google, monkeypatch, dfedit_cache):
    monkeypatch.setattr(rec, "_twitter", lambda: other_vendor(google))
    cfg = rec.ClassifierConfig(resolution=16, width=8, epochs=1, batch_size=32)
    calls = []
    real = rec.train_classifier
    monkeypatch.setattr(rec, "train_classifier", lambda *a, **k: calls.append(1) or real(*a, **k))
    net1, cls1 = rec.load_classifier(cfg, progress=False, log=lambda m: None)
    net2, cls2 = rec.load_classifier(cfg, progress=False, log=lambda m: None)
    assert len(calls) == 1 and cls1 == cls2
    d = rec.classifier_dir(cfg)
    assert (d / "classifier.safetensors").exists()
    assert json.loads((d / "classifier.json").read_text())["classes"] == cls1
    for k, v in net1.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k])
    (d / "classifier.safetensors").write_bytes(b"rotten")  # damaged: rebuilt, not trusted
    rec.load_classifier(cfg, progress=False, log=lambda m: None)
    assert len(calls) == 2
