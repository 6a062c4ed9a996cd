"""Emoji typed in a prompt reach an emoji model as their CLDR names (issue 23): the model learned
"fire", not "🔥" (dfedit/emoji/names.py)."""

import pytest

from dfedit.emoji.names import read_emoji
from dfedit.outputs import read_metadata


@pytest.mark.parametrize("typed,name", [
    ("🔥", "fire"),
    ("👍🏽", "thumbs up: medium skin tone"),
    ("👨\u200d👩\u200d👧", "family: man, woman, girl"),
    ("❤️", "red heart"),  # with the emoji variation selector FE0F
    ("❤", "red heart"),  # and without it
    ("👨🏽\u200d🦰", "man: medium skin tone, red hair"),  # a ZWJ sequence with a skin tone inside
    ("🇯🇵", "flag: Japan"),
    ("#️⃣", "keycap: #"),
])
def test_an_emoji_becomes_its_cldr_name(typed, name):
    r = read_emoji(typed)
    assert r.text == name and r.emoji == [(typed, name)] and r.foreign == ""


def test_emoji_inside_text_are_replaced_and_the_words_kept():
    assert read_emoji("a 🔥 and a 🐶").text == "a fire and a dog face"
    assert read_emoji("😀🔥").text == "grinning face fire"
    r = read_emoji("grinning face")  # no emoji: the prompt itself, spaces and digits untouched
    assert r.text == "grinning face" and not r.emoji
    assert read_emoji("#1  fan").text == "#1  fan"  # plain '#' and digits are text, not keycaps


def test_characters_neither_english_nor_emoji_are_collected():
    assert read_emoji("猫 face").foreign == "猫"
    assert read_emoji("café crème").foreign == ""  # accented Latin letters: MiniLM strips accents
    assert read_emoji("it’s a — dash").foreign == ""


def test_the_png_records_the_typed_and_the_encoded_prompt(cli, tmp_path):
    out = tmp_path / "f.png"
    code, _, err = cli("sample", "🔥", "--model", "emoji", "--steps", "2", "--quiet", "--no-display", "-o", out)
    assert code == 0, err
    meta = read_metadata(out)
    assert meta["prompt"] == "🔥" and meta["encoded_prompts"] == ["fire"]
    assert "encoded as 'fire'" in err


def test_an_emoji_prompt_draws_what_its_name_draws(tmp_path):
    from dfedit import DFEdit
    df = DFEdit(model="emoji", quiet=True)
    a, b = df.sample("🔥", seed=3, steps=2), df.sample("fire", seed=3, steps=2)
    assert (a.images == b.images).all()


def test_a_foreign_character_gets_one_note_line(cli, tmp_path):
    code, _, err = cli("sample", "猫", "--model", "emoji", "--steps", "2", "--quiet", "--no-display",
                       "-o", tmp_path / "c.png")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "neither English nor emoji" in ln]
    assert len(lines) == 1 and "猫" in lines[0]
