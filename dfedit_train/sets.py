"""Several drawing sets of the same emoji, one table: the data of a model that generalises.

A model trained on one drawing per caption learns each drawing by heart (Gu et al., TMLR 2025:
memorisation even on all of CIFAR-10 when every image has its own label). Here every emoji comes
in up to three drawings, all licensed for a model we ship:

  * google  - emoji-datasource-google (Noto, Apache-2.0)
  * twitter - emoji-datasource-twitter (Twemoji, CC-BY-4.0)
  * fluent  - @iconify-json/fluent-emoji-flat (Microsoft Fluent Emoji, MIT): SVG, rendered here

Every set is mapped onto emoji-datasource's entries by the normalised unified code (upper-case
hex, FE0F removed), so one emoji has one caption, one group (its base emoji) and one code whatever
set drew it. Apple's and Facebook's drawings are never read here: they judge (recognise.py).

The drawing set is *not* a word in the caption (MiniLM reads "twitter" as a bird): it is a row's
`style`, which the network gets as its own embedding (ModelConfig.styles).

Splits that measure generalisation, not recall (`assign_splits`):
  * "unseen": base emoji never trained on, in any set or tone (ablations only; by hash of the group);
  * "tone-pair": (emoji, skin tone) pairs held out in every set, while the emoji is trained in
    other tones and the tone on other emoji;
  * "style-pair": (emoji, set) pairs held out while the emoji is trained in the other sets.
A held-out row whose pixels equal a training row's is trained on instead (it holds nothing out).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfedit.cache import cache_root, discard, notice

from dfedit.files import atomic_write
from dfedit.emoji.text import TextEncoder
from dfedit.errors import DfeditError

from . import data as datamod
from .data import STORE_SIZE, _bucket, decode_png, normalise_code, npm_caption  # noqa: F401 (normalise_code, _bucket: sets' API too)

SETS = ("google", "twitter", "fluent")
# What each set is and the licence its images come under (NOTICE repeats the attributions).
LICENCES = {
    "google": "Noto Emoji by Google, Apache License 2.0 (emoji-datasource-google)",
    "twitter": "Twemoji by Twitter, Inc. and other contributors, CC-BY 4.0 (emoji-datasource-twitter)",
    "fluent": "Fluent Emoji by Microsoft Corporation, MIT License (@iconify-json/fluent-emoji-flat)",
}
FLUENT_PACKAGE, FLUENT_VERSION = "@iconify-json/fluent-emoji-flat", "1.2.6"
EMOJIBASE_PACKAGE, EMOJIBASE_VERSION = "emojibase-data", "16.0.3"
# Part of every table's cache key: raised whenever what a table holds changes without its inputs
# changing (2: tone variants take their base emoji's keywords), so an older table is never served.
SETS_CACHE_VERSION = 2
SPLITS = ("", "unseen", "tone-pair", "style-pair")  # "" = trained on


# ---- one row per (emoji, tone, set) ----------------------------------------------------------------

@dataclass
class Rows:
    """The multi-set table. Parallel lists, one entry per image."""

    images: list[np.ndarray] = field(default_factory=list)  # (64, 64, 3) uint8 on white
    captions: list[str] = field(default_factory=list)  # CLDR name: "thumbs up: medium skin tone"
    groups: list[str] = field(default_factory=list)  # base emoji's unified code (emoji-datasource spelling)
    tones: list[str] = field(default_factory=list)  # skin-tone key ("1F3FD", "1F3FB-1F3FF") or ""
    styles: list[str] = field(default_factory=list)  # drawing set
    codes: list[str] = field(default_factory=list)  # normalised code of the row's own emoji

    def add(self, image, caption, group, tone, style, code):
        self.images.append(image)
        self.captions.append(caption)
        self.groups.append(group)
        self.tones.append(tone)
        self.styles.append(style)
        self.codes.append(code)


def catalogue(entries: list[dict], base_only: bool) -> dict[str, tuple[dict, str]]:
    """normalised code -> (emoji-datasource entry, tone key or "") for every emoji and tone variant
    (Component swatches excluded)."""
    out = {}
    for e in entries:
        if e.get("category") == "Component":
            continue
        for u in (e.get("unified"), e.get("non_qualified")):
            if u:
                out.setdefault(normalise_code(u), (e, ""))
        if not base_only:
            for tone, v in sorted((e.get("skin_variations") or {}).items()):
                for u in (v.get("unified"), v.get("non_qualified")):
                    if u:
                        out.setdefault(normalise_code(u), (e, tone))
    return out


def read_datasource(path: Path, vendor: str, base_only: bool, rows: Rows) -> list[dict]:
    """An emoji-datasource-<vendor> tarball or folder into `rows`; returns its emoji.json entries."""
    entries, files = datamod._NpmFiles(path, vendor).read()
    for image, caption, e, tone, unified in datamod.npm_rows(entries, files, vendor, base_only):
        rows.add(image, caption, e["unified"], tone or "", vendor, normalise_code(unified))
    return entries


def _svg(icon: dict, default_w: int, default_h: int, flip: bool) -> str:
    w, h = icon.get("width", default_w), icon.get("height", default_h)
    left, top = icon.get("left", 0), icon.get("top", 0)
    body = icon["body"]
    if flip:
        body = f'<g transform="translate({2 * left + w} 0) scale(-1 1)">{body}</g>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{STORE_SIZE}" height="{STORE_SIZE}" '
            f'viewBox="{left} {top} {w} {h}">{body}</svg>')


def render_svg(svg: str, name: str) -> np.ndarray:
    """SVG text -> (64, 64, 3) uint8 on white, with resvg (a maintained renderer, no system libs)."""
    try:
        import resvg_py
    except ImportError:
        raise DfeditError("the Fluent drawing set needs the SVG renderer resvg-py: pip install resvg-py") from None
    try:
        png = bytes(resvg_py.svg_to_bytes(svg_string=svg, width=STORE_SIZE, height=STORE_SIZE))
    except (ValueError, RuntimeError) as e:
        raise DfeditError(f"could not render the Fluent drawing {name}: {e}") from None
    return decode_png(png, name)


def _read_json_members(path: Path, wanted: set[str]) -> dict[str, object]:
    """JSON members of an npm tarball (package/NAME) or of an unpacked package directory."""
    out: dict[str, object] = {}
    if path.is_dir():
        root = path / "package" if (path / "package").is_dir() else path
        for n in wanted:
            if (root / n).is_file():
                out[n] = json.loads((root / n).read_text(encoding="utf-8"))
        return out
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
                if rel in wanted and m.isfile():  # links and other kinds are never followed
                    datamod._member_limit(path, m)  # from the header, before anything is read
                    out[rel] = json.load(tf.extractfile(m))
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise DfeditError(f"could not read the npm tarball {path}: {e}") from None
    return out


def read_fluent(path: Path, cat: dict[str, tuple[dict, str]], rows: Rows) -> int:
    """The Iconify Fluent Emoji (flat) package into `rows`: chars.json maps each emoji's code to an
    icon; aliases that flip their parent are drawn flipped. Returns how many icons matched no entry."""
    got = _read_json_members(path, {"icons.json", "chars.json"})
    if "icons.json" not in got or "chars.json" not in got:
        raise DfeditError(f"{path} has no icons.json and chars.json: not an Iconify emoji package")
    icons, chars = got["icons.json"], got["chars.json"]
    bodies, aliases = icons.get("icons", {}), icons.get("aliases", {})
    W, H = icons.get("width", 16), icons.get("height", 16)
    unmatched = 0
    for code in sorted(chars):
        name = chars[code]
        key = normalise_code(code)
        if key not in cat:
            unmatched += 1
            continue
        flip = False
        while name not in bodies and name in aliases:  # an alias: its parent, maybe mirrored
            a = aliases[name]
            if a.get("rotate") or a.get("vFlip"):
                break
            flip ^= bool(a.get("hFlip"))
            name = a.get("parent", "")
        if name not in bodies:
            unmatched += 1
            continue
        e, tone = cat[key]
        rows.add(render_svg(_svg(bodies[name], W, H, flip), f"fluent/{chars[code]}"), npm_caption(e, tone or None),
                 e["unified"], tone, "fluent", key)
    return unmatched


def _npm_pack(spec: str) -> Path:
    """A pinned npm package as a tarball in the cache, fetched once (data.npm_pack) and checked by a
    full read (gzip CRC, tar structure) before it is renamed into place."""
    final = cache_root() / "npm" / (spec.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz")
    if final.exists():
        return final

    def verify(got: Path, stdout: str) -> None:
        try:
            with tarfile.open(got) as tf:
                for m in tf:
                    if m.isfile():
                        f = tf.extractfile(m)
                        while f.read(1 << 20):  # streamed: never a whole member in memory
                            pass
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DfeditError(f"the downloaded {spec} is damaged ({e}); run the command again") from None

    return datamod.npm_pack(spec, final, verify, "pass the sets you have to --sets")


def fetch_fluent() -> Path:
    return _npm_pack(f"{FLUENT_PACKAGE}@{FLUENT_VERSION}")


def fetch_emojibase() -> Path:
    return _npm_pack(f"{EMOJIBASE_PACKAGE}@{EMOJIBASE_VERSION}")


# ---- captions that vary ----------------------------------------------------------------------------

def keywords_by_code(emojibase: dict | list | None) -> dict[str, list[str]]:
    """normalised code -> CLDR keywords ("tags" in emojibase-data's en/data.json)."""
    out: dict[str, list[str]] = {}
    for e in emojibase or []:
        if isinstance(e, dict) and e.get("hexcode"):
            out[normalise_code(e["hexcode"])] = [t for t in e.get("tags") or [] if isinstance(t, str)]
    return out


def _tone_words(caption: str) -> str:
    """"thumbs up: medium skin tone" -> "medium skin tone"; "" when the caption names no tone."""
    base = datamod.base_of_caption(caption)
    return caption[len(base):].lstrip(": ").strip() if base != caption else ""


def caption_variants(caption: str, entry: dict | None, keywords: list[str]) -> list[str]:
    """Ways to ask for one emoji, the CLDR name first: the name; "X emoji"; "an emoji of X"; its
    short names (emoji-datasource); its CLDR keywords. A tone variant keeps its tone in each."""
    base = datamod.base_of_caption(caption)
    tone = _tone_words(caption)
    with_tone = (lambda s: f"{s}, {tone}") if tone else (lambda s: s)
    out = [caption, with_tone(f"{base} emoji"), with_tone(f"an emoji of {base}")]
    for s in (entry or {}).get("short_names") or []:
        s = s.replace("_", " ").replace("-", " ").strip()
        if sum(ch.isalpha() for ch in s) >= 3:
            out.append(with_tone(s))
    kws = [k for k in keywords if k and k.lower() not in base.lower().split()]
    if kws:
        out.append(with_tone(f"{base}, {', '.join(kws[:3])}"))
    if len(keywords) >= 2:
        out.append(with_tone(", ".join(keywords[:4])))
    seen, uniq = set(), []
    for v in out:
        v = " ".join(v.split())
        if v and v.lower() not in seen:
            seen.add(v.lower())
            uniq.append(v)
    return uniq


# ---- the table: read, cached -----------------------------------------------------------------------

@dataclass
class MultiSet:
    images: np.ndarray  # (N, 64, 64, 3) uint8
    captions: list[str]
    groups: list[str]
    tones: list[str]
    styles: list[str]
    codes: list[str]
    variants: list[list[str]]  # per row: caption variants, the CLDR name first
    source: str

    def __len__(self) -> int:
        return len(self.captions)


def _sources(sets: tuple[str, ...]) -> dict[str, Path]:
    paths = {}
    for s in sets:
        if s in ("google", "twitter"):
            paths[s] = datamod.fetch_npm_package(s)
        elif s == "fluent":
            paths[s] = fetch_fluent()
        else:
            raise DfeditError(f"unknown drawing set {s!r}: choose from {', '.join(SETS)}")
    return paths


def load_sets(sets: tuple[str, ...], base_only: bool = False, use_cache: bool = True,
              paths: dict[str, Path] | None = None, emojibase: Path | None = None) -> MultiSet:
    """Every requested set as one table (cached as .npz + .json), captions from Google's emoji.json
    (the sets share emoji-datasource's entries), keywords from emojibase-data."""
    sets = tuple(dict.fromkeys(sets))
    if not sets:
        raise DfeditError("no drawing sets given")
    paths = paths or _sources(sets)
    if "google" not in paths:  # the captions' source: emoji-datasource's entries
        paths = {**paths, "google": datamod.fetch_npm_package("google")}
    emojibase = emojibase if emojibase is not None else fetch_emojibase()
    ident = [SETS_CACHE_VERSION, sets, base_only, str(emojibase), os.path.getsize(emojibase)]
    ident += [(s, str(p), p.stat().st_size if p.is_file() else 0) for s, p in sorted(paths.items())]
    key = hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]
    cache = cache_root() / "data" / f"sets-{'-'.join(sets)}-{key}"
    if use_cache:
        got = _read_cache(cache)
        if got is not None:
            return got
    rows = Rows()
    entries = None
    for s in sets:
        if s in ("google", "twitter"):
            e = read_datasource(paths[s], s, base_only, rows)
            entries = entries or (e if s == "google" else None)
    if entries is None:
        entries, _ = datamod._NpmFiles(paths["google"], "google").read()
    cat = catalogue(entries, base_only)
    if "fluent" in sets:
        unmatched = read_fluent(paths["fluent"], cat, rows)
        if unmatched:
            notice(f"{unmatched} Fluent drawings match no emoji of emoji-datasource {datamod.NPM_VERSION} "
                   "(or are tone variants left out): skipped")
    kw = keywords_by_code(_read_json_members(emojibase, {"en/data.json"}).get("en/data.json"))
    by_unified = {e["unified"]: e for e in entries}
    variants = [caption_variants(c, by_unified.get(g), kw.get(code) or kw.get(normalise_code(g), []))
                for c, g, code in zip(rows.captions, rows.groups, rows.codes)]
    ms = MultiSet(np.stack(rows.images), rows.captions, rows.groups, rows.tones, rows.styles, rows.codes, variants,
                  "+".join(sets) + (" (base emoji)" if base_only else " (with skin tones)"))
    if use_cache:
        _write_cache(cache, ms)
    return ms


def _write_cache(cache: Path, ms: MultiSet) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=ms.images)
    meta = json.dumps({k: getattr(ms, k) for k in ("captions", "groups", "tones", "styles", "codes", "variants",
                                                  "source")})
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache.with_suffix(".json"), meta.encode())
        atomic_write(cache.with_suffix(".npz"), buf.getvalue())  # written last: its presence means complete
    except OSError as e:
        notice(f"could not write the data cache {cache}: {e}; continuing without it")


def _read_cache(cache: Path) -> MultiSet | None:
    npz, meta = cache.with_suffix(".npz"), cache.with_suffix(".json")
    if not npz.exists() or not meta.exists():
        return None
    inodes = {}
    try:
        inodes = {q: q.lstat().st_ino for q in (npz, meta)}
        with np.load(npz, allow_pickle=False) as z:
            images = z["images"]
        m = json.loads(meta.read_text(encoding="utf-8"))
        n = len(images)
        ok = (images.dtype == np.uint8 and images.shape[1:] == (STORE_SIZE, STORE_SIZE, 3)
              and all(len(m[k]) == n for k in ("captions", "groups", "tones", "styles", "codes", "variants")))
        if ok:
            return MultiSet(images, m["captions"], m["groups"], m["tones"], m["styles"], m["codes"], m["variants"],
                            m["source"])
        why = "lengths or shapes disagree"
    except Exception as e:  # noqa: BLE001 - any damage means: rebuild
        why = (str(e).splitlines() or [type(e).__name__])[0]
    notice(f"the data cache {npz} is damaged ({why}); rebuilding it")
    for q in (npz, meta):  # not a good entry another process has written since
        discard(q, inodes.get(q))
    return None


# ---- splits and weights ----------------------------------------------------------------------------

def assign_splits(ms: MultiSet, unseen_fraction: float, pair_fraction: float) -> list[str]:
    """Per row: "" (trained on), "unseen", "tone-pair" or "style-pair" (module docstring)."""
    n = len(ms)
    unseen = datamod.split(ms.images, ms.groups, unseen_fraction) if unseen_fraction > 0 else np.zeros(n, bool)
    out = ["unseen" if u else "" for u in unseen]
    if pair_fraction > 0:
        for i in range(n):
            if out[i] or not ms.tones[i]:
                continue
            if _bucket(f"tone:{ms.groups[i]}:{ms.tones[i]}") < pair_fraction:
                out[i] = "tone-pair"
        # a tone held out on every emoji that has it would be a tone never seen: give back one pair
        trained_tones = {t for t, o in zip(ms.tones, out) if t and not o}
        for tone in sorted({t for t, o in zip(ms.tones, out) if o == "tone-pair"} - trained_tones):
            g = min((ms.groups[i] for i in range(n) if out[i] == "tone-pair" and ms.tones[i] == tone),
                    key=lambda g: _bucket(f"tone:{g}:{tone}"))
            for i in range(n):
                if out[i] == "tone-pair" and ms.groups[i] == g and ms.tones[i] == tone:
                    out[i] = ""
        styles_of: dict[str, list[str]] = {}
        for g, s, o in zip(ms.groups, ms.styles, out):
            if o != "unseen":
                styles_of.setdefault(g, [])
                if s not in styles_of[g]:
                    styles_of[g].append(s)
        held = {}
        for g, ss in styles_of.items():
            if len(ss) < 2:
                continue  # an emoji drawn by one set only: holding it out would make it unseen
            out_s = [s for s in ss if _bucket(f"style:{g}:{s}") < pair_fraction][: len(ss) - 1]
            held[g] = set(out_s)
        for i in range(n):
            if out[i] in ("", "tone-pair") and ms.styles[i] in held.get(ms.groups[i], ()):
                out[i] = "style-pair"
    # a held-out image that equals a training image holds nothing out: train on it
    trained = {hashlib.sha1(ms.images[i].tobytes()).digest() for i in range(n) if not out[i]}
    for i in range(n):
        if out[i] and out[i] != "unseen" and hashlib.sha1(ms.images[i].tobytes()).digest() in trained:
            out[i] = ""
    return out


def run_split(ms: MultiSet, dac) -> list[str]:
    """A run's split of the table from its DataConfig: assign_splits, and with `subset` the training
    rows of all but `subset` base emoji (chosen by hash) marked "excluded" (neither trained nor held
    out: a short ablation sees many epochs of a few hundred emoji)."""
    split = assign_splits(ms, dac.val_fraction, dac.pair_holdout)
    if dac.subset:
        groups = sorted({g for g, s in zip(ms.groups, split) if not s}, key=lambda g: _bucket("subset:" + g))
        chosen = set(groups[:dac.subset])
        split = [s if s or g in chosen else "excluded" for g, s in zip(ms.groups, split)]
    return split


def row_weights(ms: MultiSet, rows, tone_share: float) -> np.ndarray:
    """Sampling weight per row: 1 for a base emoji; its tone variants in one set share `tone_share`
    between them, so the 323 people emoji with 5-25 tones each do not fill an epoch."""
    rows = list(rows)
    count: dict[tuple[str, str], int] = {}
    for i in rows:
        if ms.tones[i]:
            count[(ms.groups[i], ms.styles[i])] = count.get((ms.groups[i], ms.styles[i]), 0) + 1
    return np.array([tone_share / count[(ms.groups[i], ms.styles[i])] if ms.tones[i] else 1.0 for i in rows])


def prepare_sets(dac, size: int, device, styles: tuple[str, ...]) -> dict:
    """What a run of several drawing sets trains from: data.prepare_data's tensors, plus every caption
    variant embedded once ("vtext"; "vidx"/"vcount" say which rows each training row may draw), the
    style index of each row (1-based into `styles`; absent when the model has no styles) and the
    sampling weight of each row (tone variants share their base's weight)."""
    ms = load_sets(tuple(dac.sets), dac.base_only)
    split = run_split(ms, dac)
    tr = [i for i, s in enumerate(split) if not s]
    va = [i for i, s in enumerate(split) if s and s != "excluded"]
    if not tr:
        raise DfeditError("the training split is empty: add images or lower --val-fraction")
    rows = tr + va
    per_row = [ms.variants[i] if dac.caption_variants else [ms.captions[i]] for i in rows]
    unique = sorted({v for vs in per_row for v in vs})
    where = {v: j for j, v in enumerate(unique)}
    enc = TextEncoder(dac.text_encoder, dac.max_length, device="cpu")
    states, mask = enc.embed(unique)  # fp16: the step draws a few rows and casts them
    K = max(len(vs) for vs in per_row)
    vidx = torch.tensor([[where[v] for v in vs] + [where[vs[0]]] * (K - len(vs)) for vs in per_row])
    vcount = torch.tensor([len(vs) for vs in per_row])
    prim, ntr = vidx[:, 0], len(tr)  # each row's CLDR name: the validation grid's caption
    D = datamod.on_device(ms.images, ms.captions, tr, va, (states[prim[:ntr]].float(), mask[prim[:ntr]]),
                          (states[prim[ntr:]].float(), mask[prim[ntr:]]), ms.source, enc, size, device)
    D["weights"] = torch.from_numpy(row_weights(ms, tr, dac.tone_share)).double()
    if dac.caption_variants:
        D.update(vtext=states.to(device), vmask=mask.to(device), vidx=vidx[:ntr].to(device),
                 vcount=vcount[:ntr].to(device), name_share=dac.caption_name_share)
    if styles:
        unknown = sorted({ms.styles[i] for i in rows} - set(styles))
        if unknown:
            raise DfeditError(f"the model's styles ({', '.join(styles)}) do not name the drawing sets {', '.join(unknown)}")
        D["style"] = torch.tensor([styles.index(ms.styles[i]) + 1 for i in tr], device=device)
    return D
