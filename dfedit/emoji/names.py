"""Emoji typed in a prompt become their English (CLDR) names before an emoji model encodes it.

The emoji models learned captions such as "fire", "thumbs up" or "flag: Japan" (the trainer's
captions are CLDR short names: dfedit_train/data.py, `npm_caption`); its text encoder (MiniLM) has
no idea what "🔥" is. So `dfedit sample "🔥" --model emoji` encodes "fire":

    >>> read_emoji("🔥").text, read_emoji("👍🏽").text, read_emoji("👨‍👩‍👧").text
    ('fire', 'thumbs up: medium skin tone', 'family: man, woman, girl')

An emoji is matched with or without its variation selector (U+FE0F), with skin-tone modifiers and as
a whole ZWJ sequence (the longest known sequence wins). The names come from names.json, built from
Unicode CLDR data by names_table.py and shipped with the package (no download).
`dfedit.backends.emoji` hands `for_encoder` to the pipeline, the one place an emoji model's prompts
are turned into what its text encoder reads.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("names.json")
TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
         "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}
SELECTORS = {0xFE0E, 0xFE0F}  # text / emoji presentation: never part of a name
HAIR = ("red hair", "curly hair", "white hair", "bald", "beard")


def key_of(hexcode: str) -> str:
    """"1F44D-FE0F" -> "1F44D", "00A9" -> "A9": the table's key (hex without leading zeros, no
    variation selectors)."""
    return "-".join(f"{int(c, 16):X}" for c in hexcode.split("-") if int(c, 16) not in SELECTORS)


def tone_name(key: str, names: dict[str, str]) -> str | None:
    """CLDR's name of a skin-tone variant from its base emoji's name: "thumbs up: medium skin
    tone", "man: dark skin tone, red hair", "kiss: person, person, light skin tone, dark skin tone"."""
    cps = key.split("-")
    tones = list(dict.fromkeys(TONES[c] for c in cps if c in TONES))
    base = names.get("-".join(c for c in cps if c not in TONES))
    if not tones or base is None:
        return None
    t = ", ".join(tones)
    if ": " not in base:
        return f"{base}: {t}"
    head, tail = base.split(": ", 1)
    return f"{head}: {t}, {tail}" if tail in HAIR else f"{base}, {t}"


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, str], dict[str, str], int]:
    data = json.loads(TABLE.read_text(encoding="utf-8"))
    names, extra = data["names"], data["tone_exceptions"]
    longest = max(len(k.split("-")) for k in (*names, *extra))
    return names, extra, longest


def name_of(chars: str) -> str | None:
    """The CLDR name of one emoji (a whole sequence), or None when it is not one."""
    names, extra, _ = _table()
    key = "-".join(f"{ord(c):X}" for c in chars if ord(c) not in SELECTORS)
    if not key:
        return None
    return names.get(key) or extra.get(key) or tone_name(key, names)


@dataclass
class Reading:
    """A prompt as an emoji model reads it."""

    typed: str
    text: str  # what the text encoder is given
    emoji: list[tuple[str, str]] = field(default_factory=list)  # (the emoji as typed, its name)
    foreign: str = ""  # characters that are neither English text nor emoji, each once


def _english(c: str) -> bool:
    """ASCII, Latin letters with accents, punctuation, spaces, combining marks: what MiniLM's
    English vocabulary reads (it strips accents)."""
    if ord(c) < 0x80:
        return True
    cat = unicodedata.category(c)
    if cat[0] in "PZM" or cat == "Cf":
        return True
    return cat[0] == "L" and unicodedata.name(c, "").startswith("LATIN")


def read_emoji(prompt: str) -> Reading:
    """Replace every emoji in `prompt` by its CLDR name (separated from the words around it by a
    space) and collect the characters an English text encoder cannot read."""
    _, _, longest = _table()
    out: list[str] = []
    found: list[tuple[str, str]] = []
    foreign: dict[str, None] = {}
    i, n = 0, len(prompt)
    while i < n:
        match = None
        # the longest sequence first: variation selectors do not count towards a sequence's length
        j, counted = i, 0
        ends = []
        while j < n and counted < longest:
            if ord(prompt[j]) not in SELECTORS:
                counted += 1
            j += 1
            ends.append(j)
        for end in reversed(ends):
            name = name_of(prompt[i:end])
            if name is not None and any(ord(c) > 0x7F for c in prompt[i:end]):
                match = (end, name)
                break
        if match is None:
            c = prompt[i]
            if ord(c) not in SELECTORS and c != "\u200d":
                out.append(c)
                if not _english(c):
                    foreign[c] = None
            i += 1
            continue
        end, name = match
        found.append((prompt[i:end], name))
        out.append(f" {name} ")
        i = end
    text = " ".join("".join(out).split())
    return Reading(prompt, text if found else prompt, found, "".join(foreign))


def for_encoder(prompt: str, say=None) -> str:
    """The text an emoji model encodes for `prompt`; `say(line)` (if given) hears one line about
    a prompt that had emoji replaced or characters the encoder cannot read."""
    r = read_emoji(prompt)
    if say is not None and r.emoji:
        say(f"the emoji model reads English names: {prompt!r} is encoded as {r.text!r}")
    if say is not None and r.foreign:
        say(f"the prompt {prompt!r} has characters that are neither English nor emoji ({r.foreign}); the emoji "
            "model's text encoder reads English emoji names (list them: dfedit prompts --model emoji)")
    return r.text
