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

from dfedit.cache import cache_root

# The user's cache as it was before tests/conftest.py pointed $DFEDIT_CACHE at a temp dir
# (this module is imported first): tests that check against the real npm packages look there, and
# skip when they were never downloaded.
USER_CACHE = cache_root()

# Real code points so the `emoji` package names them: 16 faces, 3 hands with skin tones, a flag,
# a keycap, and a Component entry that must be dropped.
FACES = [f"1F6{i:02X}" for i in range(0x00, 0x10)]
HANDS = ["1F44D", "1F44B", "1F44F"]
TONES = ["1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"]
FLAG, KEYCAP, COMPONENT = "1F1FA-1F1F8", "0023-FE0F-20E3", "1F3FB"


# How the other synthetic vendors draw the same design: shifted and a little darker or lighter, as
# another vendor's drawing of an emoji keeps its colours and layout but not its exact pixels.
STYLES = {"google": (0, 0, 0), "twitter": (2, 0, -10), "apple": (-2, 1, -14), "facebook": (1, -2, 12)}


def emoji_png(key: str, size: int = 64, mode: str = "RGBA", style: str = "google") -> bytes:
    """A distinct, deterministic picture per key: a coloured disc and bar on a transparent ground,
    drawn in one of the synthetic vendors' STYLES."""
    h = hashlib.sha1(key.encode()).digest()
    dx, dy, tint = STYLES[style]
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    c1 = tuple(min(255, max(0, c + tint)) for c in h[0:3]) + (255,)
    c2 = tuple(min(255, max(0, c + tint)) for c in h[3:6]) + (255,)
    r = size // 4 + h[6] % (size // 4)
    cx, cy = size // 2 + dx, size // 2 + dy
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c1)
    y = h[7] % (size - 8) + dy
    d.rectangle([4 + dx, y, size - 4 + dx, y + 6], fill=c2)
    if mode != "RGBA":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def npm_entries(vendor: str = "google") -> list[dict]:
    """emoji.json; a vendor other than Google lacks a drawing of the last face (vendors do)."""
    def entry(u, cat="Smileys & Emotion", sub="face-smiling", name="X"):
        return {"name": name, "unified": u, "non_qualified": None, "image": u.lower() + ".png",
                "category": cat, "subcategory": sub, f"has_img_{vendor}": vendor == "google" or u != FACES[-1],
                "short_name": name.lower(), "short_names": [name.lower().replace(" ", "_")]}
    es = [entry(u, name=f"FACE {u}") for u in FACES]
    for u in HANDS:
        e = entry(u, "People & Body", "hand-fingers-open", f"HAND {u}")
        e["skin_variations"] = {t: {"unified": f"{u}-{t}", "image": f"{u}-{t}".lower() + ".png",
                                    f"has_img_{vendor}": True} for t in TONES}
        es.append(e)
    es.append(entry(FLAG, "Flags", "country-flag", "REGIONAL INDICATOR US"))
    es.append(entry(KEYCAP, "Symbols", "keycap", "HASH KEY"))
    es.append(entry(COMPONENT, "Component", "skin-tone", "EMOJI MODIFIER FITZPATRICK TYPE-1-2"))
    return es


def npm_files(vendor: str = "google") -> dict[str, bytes]:
    files = {}
    for e in npm_entries(vendor):
        if not e[f"has_img_{vendor}"]:
            continue
        files[e["image"]] = emoji_png(e["unified"], mode="P" if e["unified"] == FACES[1] else "RGBA", style=vendor)
        for v in (e.get("skin_variations") or {}).values():
            files[v["image"]] = emoji_png(v["unified"], style=vendor)
    # An exact duplicate across two different base emoji (like Google's Sark/Saudi flags).
    files[FACES[3].lower() + ".png"] = files[FACES[2].lower() + ".png"]
    return files


def write_tarball(path, files: dict[str, bytes], entries: list[dict], vendor: str = "google") -> None:
    with tarfile.open(path, "w:gz") as tf:
        def add(name, data):
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        add("package.json", json.dumps({"name": f"emoji-datasource-{vendor}", "version": "16.0.0"}).encode())
        add("emoji.json", json.dumps(entries).encode())
        for n, data in files.items():
            add(f"img/{vendor}/64/{n}", data)


def vendor_tarball(directory, vendor: str):
    """The synthetic emoji-datasource-<vendor>@16.0.0 tarball, written into `directory`."""
    p = directory / f"emoji-datasource-{vendor}-16.0.0.tgz"
    write_tarball(p, npm_files(vendor), npm_entries(vendor), vendor)
    return p



def tiny_configs(encoder, source, epochs=2, **train):
    """Tiny preset configs for a given data source and encoder path."""
    from dataclasses import replace

    from dfedit_train.config import DataConfig, preset
    mc, dc, tc = preset("tiny")
    tc = replace(tc, epochs=epochs, **train)
    dac = DataConfig(source=str(source), text_encoder=str(encoder), max_length=12, val_fraction=0.15)
    return mc, dc, tc, dac
