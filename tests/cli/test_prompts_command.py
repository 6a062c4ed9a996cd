"""`dfedit prompts --model emoji [--search WORD]`: the captions the built-in model was trained on,
from the list it ships (dfedit/weights/emoji/captions.json, written by dfedit_train/captions.py)."""

import json

from dfedit.emoji.checkpoint import BUILTIN


def _lists():
    return json.loads((BUILTIN["emoji"] / "captions.json").read_text(encoding="utf-8"))


def test_the_shipped_list_is_the_models_split():
    cfg = json.loads((BUILTIN["emoji"] / "config.json").read_text())["data"]
    lists = _lists()
    assert (len(lists["train"]), len(lists["held_out"])) == (cfg["n_train"], cfg["n_val"]) == (1722, 184)
    assert not set(lists["train"]) & set(lists["held_out"])
    # the record's recognisability samples say which split each caption is in: they agree
    rec = json.loads((BUILTIN["emoji"] / "record.json").read_text())
    for s in rec["eval"]["recognise"]["samples"]:
        if s["split"] == "train":
            assert s["caption"] in lists["train"], s
        elif s["split"] == "held-out":
            assert s["caption"] in lists["held_out"], s


def test_prompts_lists_the_training_captions(cli):
    code, out, err = cli("prompts")
    assert code == 0, err
    assert out.splitlines() == _lists()["train"]
    assert "grinning face" in out.splitlines() and "1722 of the 1722 training captions" in err


def test_search_filters_and_held_out_captions_are_pointed_at(cli):
    code, out, _ = cli("prompts", "--model", "emoji", "--search", "HEART")
    assert code == 0 and "red heart" in out.splitlines()
    assert all("heart" in c.lower() for c in out.splitlines())
    code, out, err = cli("prompts", "--search", "rocket")  # held out: not a training caption
    assert code == 1 and out == "" and "--held-out" in err
    code, out, _ = cli("prompts", "--held-out", "--search", "thumbs up")
    assert code == 0 and out.splitlines() == ["thumbs up"]


def test_an_if_model_is_refused_without_a_hub_look_up(cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("prompts", "--model", "DeepFloyd/IF-I-XL-v1.0")
    assert code == 1 and err.strip().splitlines() == [
        "dfedit: error: --model DeepFloyd/IF-I-XL-v1.0 is not an emoji model (an IF model reads any English "
        "prompt); dfedit prompts lists the captions an emoji model was trained on (try --model emoji)"]
