"""Synthetic emoji data in the npm, Kaggle and folder layouts, made on the spot (no network).

A separate module (not conftest) so test files can import the helpers without clashing with the
top-level tests/conftest.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

from PIL import Image, ImageDraw

# Real code points so the `emoji` package names them: 16 faces, 3 hands with skin tones, a flag,
# a keycap, and a Component entry that must be dropped.
FACES = [f"1F6{i:02X}" for i in range(0x00, 0x10)]
HANDS = ["1F44D", "1F44B", "1F44F"]
TONES = ["1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"]
FLAG, KEYCAP, COMPONENT = "1F1FA-1F1F8", "0023-FE0F-20E3", "1F3FB"


def emoji_png(key: str, size: int = 64, mode: str = "RGBA") -> bytes:
    """A distinct, deterministic picture per key: a coloured disc and bar on a transparent ground."""
    h = hashlib.sha1(key.encode()).digest()
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    c1, c2 = tuple(h[0:3]) + (255,), tuple(h[3:6]) + (255,)
    r = size // 4 + h[6] % (size // 4)
    d.ellipse([size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r], fill=c1)
    y = h[7] % (size - 8)
    d.rectangle([4, y, size - 4, y + 6], fill=c2)
    if mode != "RGBA":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def npm_entries() -> list[dict]:
    def entry(u, cat="Smileys & Emotion", sub="face-smiling", name="X"):
        return {"name": name, "unified": u, "non_qualified": None, "image": u.lower() + ".png",
                "category": cat, "subcategory": sub, "has_img_google": True, "short_name": name.lower()}
    es = [entry(u, name=f"FACE {u}") for u in FACES]
    for u in HANDS:
        e = entry(u, "People & Body", "hand-fingers-open", f"HAND {u}")
        e["skin_variations"] = {t: {"unified": f"{u}-{t}", "image": f"{u}-{t}".lower() + ".png",
                                    "has_img_google": True} for t in TONES}
        es.append(e)
    es.append(entry(FLAG, "Flags", "country-flag", "REGIONAL INDICATOR US"))
    es.append(entry(KEYCAP, "Symbols", "keycap", "HASH KEY"))
    es.append(entry(COMPONENT, "Component", "skin-tone", "EMOJI MODIFIER FITZPATRICK TYPE-1-2"))
    return es


def npm_files() -> dict[str, bytes]:
    files = {}
    for e in npm_entries():
        files[e["image"]] = emoji_png(e["unified"], mode="P" if e["unified"] == FACES[1] else "RGBA")
        for v in (e.get("skin_variations") or {}).values():
            files[v["image"]] = emoji_png(v["unified"])
    # An exact duplicate across two different base emoji (like Google's Sark/Saudi flags).
    files[FACES[3].lower() + ".png"] = files[FACES[2].lower() + ".png"]
    return files


def write_tarball(path, files: dict[str, bytes], entries: list[dict]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        def add(name, data):
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        add("package.json", json.dumps({"name": "emoji-datasource-google", "version": "16.0.0"}).encode())
        add("emoji.json", json.dumps(entries).encode())
        for n, data in files.items():
            add(f"img/google/64/{n}", data)



def tiny_configs(encoder, source, epochs=2, **train):
    """Tiny preset configs for a given data source and encoder path."""
    from dataclasses import replace

    from dfedit_train.config import DataConfig, preset
    mc, dc, tc = preset("tiny")
    tc = replace(tc, epochs=epochs, **train)
    dac = DataConfig(source=str(source), text_encoder=str(encoder), max_length=12, val_fraction=0.15)
    return mc, dc, tc, dac
