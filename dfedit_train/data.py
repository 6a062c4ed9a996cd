"""Emoji data: every supported layout becomes one `EmojiData` (uint8 images, captions, split), cached.

Sources, detected from `--data`:
  * nothing / "npm": the npm package emoji-datasource-<vendor>, fetched once with the ordinary
    `npm pack` into the user cache and read straight from the tarball (no download addresses here);
  * a .tgz or an unpacked npm package (emoji.json + img/<vendor>/64/*.png);
  * the Kaggle "emojiimage-dataset" layout: full_emoji.csv + image/<Vendor>/<#>.png;
  * a folder of PNGs with a CSV naming the file and its caption.
Images are alpha-composited on white (emoji PNGs are ~43% transparent; black-on-transparent would
otherwise become black-on-black) and resized to 64x64 once; training resizes further on the device.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dfedit.cache import cache_root, discard, notice

from dfedit.files import atomic_write, clean_stale_temps, write_error
from dfedit.emoji.text import TextEncoder
from dfedit.files import make_temp_dir
from dfedit.errors import DfeditError

NPM_VERSION = "16.0.0"  # pinned: captions, counts and the split are only reproducible for one version
VENDORS = ("google", "twitter", "apple", "facebook")
LICENCE_WARNINGS = {
    "apple": "Apple's emoji images are not licensed for commercial use; do not publish models trained on them.",
    "facebook": "Facebook's emoji images have no clear licence; check before publishing models trained on them.",
}
# sha512 of the pinned tarballs (as `npm pack --json` reports it), checked after every download
NPM_INTEGRITY = {
    "google": "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
}
STORE_SIZE = 64  # side every source is stored at
MAX_IMAGE_PIXELS = 4096 * 4096  # an emoji image larger than this is refused before decoding
# npm tarball members read into memory: anything larger is refused before it is read
MAX_JSON_BYTES, MAX_PNG_BYTES = 64 << 20, 4 << 20
# Members dfedit never reads (the sprite sheets, 13.8 MB at most in 16.0.0) are streamed by the
# integrity check, never held whole; they get a looser bound.
MAX_OTHER_BYTES = 64 << 20
CACHE_VERSION = 1
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}


def to_resolution(x: torch.Tensor, size: int) -> torch.Tensor:
    """The trainer's downsampling of the stored 64 px images (bilinear with antialiasing, once, on the
    CPU); evaluation and the recognisability judge use it too, so real images match training data."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def images_to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 64, 64, 3) uint8 -> (N, 3, size, size) float in [-1, 1]."""
    return to_resolution(torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1), size)


@dataclass
class EmojiData:
    images: np.ndarray  # (N, 64, 64, 3) uint8, composited on white
    captions: list[str]
    groups: list[str]  # split key: the base emoji, so skin tones share a split
    val: np.ndarray  # (N,) bool
    source: str  # human-readable description, recorded in the checkpoint

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, mask: np.ndarray) -> "EmojiData":
        idx = np.flatnonzero(mask)
        return EmojiData(self.images[idx], [self.captions[i] for i in idx], [self.groups[i] for i in idx],
                         self.val[idx], self.source)


# ---- image decoding --------------------------------------------------------------------------

def decode_png(data: bytes, name: str) -> np.ndarray:
    """PNG bytes -> (64, 64, 3) uint8 on white. Modes vary (RGBA, LA, P): always go through RGBA."""
    try:
        im = Image.open(io.BytesIO(data))
        if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:  # from the header: a small file can claim a huge image
            raise ValueError(f"it claims {im.size[0]} x {im.size[1]} pixels, more than {MAX_IMAGE_PIXELS:,}")
        im.load()
        im = im.convert("RGBA")
    except Exception as e:  # PIL raises several types for broken files
        raise DfeditError(f"could not read image {name}: not a valid image ({str(e).splitlines()[0]})") from None
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, im).convert("RGB")
    if rgb.size != (STORE_SIZE, STORE_SIZE):
        rgb = rgb.resize((STORE_SIZE, STORE_SIZE), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


# ---- captions ----------------------------------------------------------------------------------

def _chars(unified: str) -> str:
    return "".join(chr(int(c, 16)) for c in unified.split("-"))


def _emoji_package_name(*unified: str | None) -> str | None:
    """CLDR short name from the PyPI `emoji` package (":thumbs_up:" -> "thumbs up"), if installed."""
    try:
        from emoji import EMOJI_DATA
    except ImportError:
        return None
    for u in unified:
        if not u:
            continue
        for s in (_chars(u), _chars(u).replace("\ufe0f", "")):
            if s in EMOJI_DATA:
                return EMOJI_DATA[s]["en"].strip(":").replace("_", " ")
    return None


def npm_caption(entry: dict, tone_key: str | None = None) -> str:
    """CLDR-style caption: "grinning face", "thumbs up: medium skin tone", "flag: United States"."""
    name = _emoji_package_name(entry.get("unified"), entry.get("non_qualified"))
    if name is None:  # old upper-case Unicode name: worse, but never missing
        name = (entry.get("name") or entry.get("short_name") or entry["unified"]).lower()
    hair = _HAIR.match(name)  # "man red hair" -> CLDR's "man: red hair" / "man: light skin tone, red hair"
    if entry.get("subcategory") in ("country-flag", "subdivision-flag") and not name.startswith("flag"):
        name = "flag: " + name
    if name.startswith("keycap ") and not name.startswith("keycap:"):
        name = "keycap: " + name[len("keycap "):]
    tones = ", ".join(dict.fromkeys(SKIN_TONES.get(k, k.lower()) for k in tone_key.split("-"))) if tone_key else ""
    if hair:
        return f"{hair[1]}: {tones + ', ' if tones else ''}{hair[2]}"
    return f"{name}: {tones}" if tones else name


_HAIR = re.compile(r"^(man|woman|person) (red hair|curly hair|white hair|bald|beard)$")
_TONE_SUFFIX = re.compile(r":\s*(light|medium-light|medium|medium-dark|dark) skin tone.*$")


def base_of_caption(caption: str) -> str:
    return _TONE_SUFFIX.sub("", caption)


# "1F44D", "U+1F44D", "23" (a file name's spelling of U+0023); a hex word without a digit ("FACE")
# is a word, not a code point
_CODE_POINT = re.compile(r"^(U\+[0-9A-F]{1,6}|(?=[0-9A-F]*[0-9])[0-9A-F]{1,6})$")


def normalise_code(unified: str, drop_tones: bool = False) -> str:
    """One key for an emoji whatever drawing set it came from: its code points as upper-case hex,
    '-' joined, with U+FE0F (the emoji presentation selector, which sets spell differently)
    removed; "263a-fe0f" and "U+263A" both become "263A". drop_tones also removes skin-tone
    modifiers (a toned variant's key becomes its base emoji's). A key that is not code points (a
    caption-keyed folder data set) is returned stripped but otherwise unchanged."""
    parts = [p.upper() for p in re.split(r"[-\s_]+", unified.strip()) if p]
    if not parts or not all(_CODE_POINT.match(p) for p in parts):
        return unified.strip()
    parts = [p.removeprefix("U+").lstrip("0").rjust(4, "0") for p in parts]
    keep = [p for p in parts if p != "FE0F" and not (drop_tones and p in SKIN_TONES)]
    return "-".join(keep or parts)


# ---- sources -----------------------------------------------------------------------------------

def fetch_npm_package(vendor: str) -> Path:
    """The pinned npm tarball in the cache, fetched with `npm pack` the first time.

    `npm pack` writes into a private temporary directory; the tarball is verified there (npm's
    reported sha512 when it gives one, then a full read: gzip CRC, tar structure, emoji.json) and
    only then renamed to its final name, so a killed or failed download never leaves a truncated
    tarball where later runs would find it."""
    pkg = f"emoji-datasource-{vendor}"
    dest = cache_root() / "npm"
    tgz = dest / f"{pkg}-{NPM_VERSION}.tgz"
    if tgz.exists():
        pinned = NPM_INTEGRITY.get(vendor)
        if pinned is None or _sha512(tgz) == pinned:  # rechecked on every use: the cache is not trusted
            return tgz
        notice(f"the cached {tgz} does not match the pinned checksum of {pkg}@{NPM_VERSION} (changed since it was "
               "downloaded); fetching it again")
        tgz.unlink()
    def verify(got: Path, stdout: str) -> None:
        reported = _npm_integrity(stdout)
        verify_npm_tarball(got, reported)
        pinned = NPM_INTEGRITY.get(vendor)
        if pinned and reported and reported != pinned:
            raise DfeditError(f"npm served {pkg}@{NPM_VERSION} with checksum {reported[:19]}..., not the pinned "
                              f"{pinned[:19]}...; the package has changed upstream: pass --data with a local copy")

    return npm_pack(f"{pkg}@{NPM_VERSION}", tgz, verify, "pass --data with a local copy of the emoji images")


def npm_pack(spec: str, tgz: Path, verify, instead: str) -> Path:
    """`npm pack SPEC` into a fresh private directory beside `tgz`; `verify(tarball, npm's stdout)`
    raises unless the download is whole; only then is it fsync'd and renamed to `tgz`, so a killed
    or failed download never leaves a truncated tarball where later runs would find it. `instead`:
    what a user without npm or network can do."""
    npm = shutil.which("npm")
    if npm is None:
        raise DfeditError(f"npm was not found: install Node.js/npm to fetch {spec}, or {instead}")
    dest = tgz.parent
    dest.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(dest)  # a download killed earlier (our temporaries only)
    work = make_temp_dir(tgz)  # a fresh private directory: nothing planted in it
    try:
        try:
            r = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", str(work)],
                               capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DfeditError(f"npm pack {spec} failed: {e}") from None
        made = sorted(work.glob("*.tgz"))
        if r.returncode != 0 or len(made) != 1:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise DfeditError(f"npm pack {spec} failed ({last}); check your network or {instead}")
        verify(made[0], r.stdout)
        with open(made[0], "rb") as f:  # npm wrote it: on the disk before it is published, as atomic_write does
            os.fsync(f.fileno())
        os.replace(made[0], tgz)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tgz


def _tarball_ok(path: Path) -> bool:
    try:
        verify_npm_tarball(path)
        return True
    except DfeditError:
        return False


def _npm_integrity(stdout: str) -> str | None:
    """The "integrity" (sha512-BASE64) `npm pack --json` reports for the tarball, if any."""
    try:
        info = json.loads(stdout)
        item = info[0] if isinstance(info, list) else info
        value = item.get("integrity")
        return value if isinstance(value, str) and value.startswith("sha512-") else None
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        return None


def _sha512(path: Path) -> str:
    """npm's integrity string (sha512-BASE64) of a file."""
    import base64

    h = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def _member_limit(path: Path, m: tarfile.TarInfo) -> None:
    """Refuse a member larger than any file of an emoji-datasource package, from its header alone."""
    read = re.match(r"^(package/)?img/[^/]+/64/[^/]+$", m.name) is not None  # what _NpmFiles reads
    limit = MAX_JSON_BYTES if m.name.endswith(".json") else MAX_PNG_BYTES if read else MAX_OTHER_BYTES
    if m.size > limit:
        raise DfeditError(f"{path}: member {m.name[:80]} claims {m.size:,} bytes, more than the {limit:,} an "
                          "emoji-datasource file may have: not an emoji-datasource tarball")


def verify_npm_tarball(path: Path, integrity: str | None = None) -> None:
    """Raise unless `path` is a complete emoji-datasource tarball (and matches `integrity`)."""
    if integrity is not None:
        if _sha512(path) != integrity:
            raise DfeditError(f"the downloaded {path.name} does not match the checksum npm reported; "
                              "run the command again")
    try:
        with tarfile.open(path) as tf:
            names = set()
            for m in tf:  # reading every member checks the gzip CRC and the tar structure
                names.add(m.name)
                if m.isfile():
                    _member_limit(path, m)
                    f = tf.extractfile(m)
                    while f.read(1 << 20):  # streamed: never a whole member in memory
                        pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DfeditError(f"the downloaded {path.name} is damaged ({e}); run the command again") from None
    if "package/emoji.json" not in names:
        raise DfeditError(f"the downloaded {path.name} has no package/emoji.json: not an emoji-datasource package")


class _NpmFiles:
    """emoji.json + PNGs from either the tarball (read in one pass) or an unpacked package directory."""

    def __init__(self, path: Path, vendor: str):
        self.path, self.vendor = path, vendor
        self.prefix = f"img/{vendor}/64/"

    def read(self) -> tuple[list[dict], dict[str, bytes]]:
        files: dict[str, bytes] = {}
        if self.path.is_dir():
            root = self.path / "package" if (self.path / "package" / "emoji.json").exists() else self.path
            if not (root / "emoji.json").exists():
                raise DfeditError(f"{self.path} has no emoji.json: not an emoji-datasource package")
            entries = json.loads((root / "emoji.json").read_text())
            for p in (root / self.prefix).glob("*.png"):
                files[p.name] = p.read_bytes()
            return entries, files
        try:
            with tarfile.open(self.path) as tf:
                entries, links = None, []
                for m in tf:  # one sequential pass: random access into a .tgz re-decompresses
                    rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
                    if rel != "emoji.json" and not rel.startswith(self.prefix):
                        continue
                    if not m.isfile():  # a package has no links: never followed, whatever they name
                        links += [m.name] if (m.issym() or m.islnk()) else []
                        continue
                    _member_limit(self.path, m)
                    if rel == "emoji.json":
                        entries = json.load(tf.extractfile(m))
                    else:
                        files[rel[len(self.prefix):]] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DfeditError(f"could not read the npm tarball {self.path}: {e}") from None
        except RecursionError:
            raise DfeditError(f"could not read the npm tarball {self.path}: its emoji.json is not valid JSON "
                              "(nested too deeply)") from None
        if entries is None:
            linked = " (only a link of that name, which is never followed)" if any(
                n.endswith("/emoji.json") for n in links) else ""
            raise DfeditError(f"{self.path} has no package/emoji.json{linked}: not an emoji-datasource tarball")
        if links:
            notice(f"{self.path}: ignored {len(links)} link(s) in the tarball (e.g. {links[0][:80]}); an "
                   "emoji-datasource package has none")
        return entries, files


def npm_rows(entries: list[dict], files: dict[str, bytes], vendor: str, base_only: bool):
    """Every image of an emoji-datasource package, as (image, caption, entry, tone key or None,
    the variant's own unified code); Component entries (bare skin-tone swatches: not emoji anyone
    asks for) and images the vendor does not draw are left out."""
    for e in entries:
        if e.get("category") == "Component":
            continue
        variants = [(None, e)]
        if not base_only:
            variants += sorted((e.get("skin_variations") or {}).items())
        for tone, v in variants:
            name = v.get("image") or (v["unified"].lower() + ".png")
            if not v.get(f"has_img_{vendor}", True) or name not in files:
                continue
            yield decode_png(files[name], name), npm_caption(e, tone), e, tone, v["unified"]


def read_npm(path: Path, vendor: str, base_only: bool) -> tuple[list[np.ndarray], list[str], list[str]]:
    entries, files = _NpmFiles(path, vendor).read()
    rows = list(npm_rows(entries, files, vendor, base_only))
    if not rows:
        raise DfeditError(f"no {vendor} images found in {path}")
    return [r[0] for r in rows], [r[1] for r in rows], [r[2]["unified"] for r in rows]


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DfeditError(f"could not read {path}: {e}") from None


def read_kaggle(root: Path, vendor: str, base_only: bool):
    """Kaggle emojiimage-dataset: full_emoji.csv ('#', 'unicode', 'name', ...) + image/<Vendor>/<#>.png."""
    rows = _read_csv(root / "full_emoji.csv")
    cols = set(rows[0]) if rows else set()
    for col in ("#", "name"):
        if col not in cols:
            raise DfeditError(f"{root / 'full_emoji.csv'} has no {col!r} column: not the emojiimage-dataset layout")
    vendors = {p.name.lower(): p for p in (root / "image").iterdir() if p.is_dir()} if (root / "image").is_dir() else {}
    if vendor.lower() not in vendors:
        raise DfeditError(f"{root} has no image/{vendor.capitalize()} folder (found: {', '.join(sorted(vendors)) or 'none'})")
    img_dir = vendors[vendor.lower()]
    images, captions, groups = [], [], []
    for r in rows:
        caption = (r["name"] or "").strip()
        p = img_dir / f"{(r['#'] or '').strip()}.png"
        if not caption or not p.exists() or (base_only and "skin tone" in caption):
            continue  # vendors lack some emoji: skip, do not fail
        images.append(decode_png(p.read_bytes(), str(p)))
        captions.append(caption)
        groups.append(_kaggle_group(r.get("unicode"), caption))
    if not images:
        raise DfeditError(f"no images with captions found under {img_dir}")
    return images, captions, groups


def _kaggle_group(unicode: str | None, caption: str) -> str:
    """Base emoji of a row: its code points without skin-tone modifiers, else the caption's base."""
    if unicode:
        cps = [c.upper().replace("U+", "") for c in unicode.split()]
        cps = [c for c in cps if c not in SKIN_TONES]
        if cps:
            return "-".join(cps)
    return base_of_caption(caption)


FILE_COLUMNS = ("file", "filename", "image", "path")
CAPTION_COLUMNS = ("caption", "name", "text", "prompt")


def read_folder(root: Path, base_only: bool):
    """A folder of images and one CSV with a file column and a caption column."""
    csvs = sorted(root.glob("*.csv"))
    if not csvs:
        raise DfeditError(f"{root} has no emoji.json, full_emoji.csv or captions CSV: not a supported data layout")
    path = next((c for c in csvs if c.name == "captions.csv"), csvs[0])
    rows = _read_csv(path)
    cols = set(rows[0]) if rows else set()
    fcol = next((c for c in FILE_COLUMNS if c in cols), None)
    ccol = next((c for c in CAPTION_COLUMNS if c in cols), None)
    if fcol is None or ccol is None:
        raise DfeditError(f"{path} needs a file column ({'/'.join(FILE_COLUMNS)}) and a caption column "
                          f"({'/'.join(CAPTION_COLUMNS)}); it has: {', '.join(sorted(cols)) or 'nothing'}")
    images, captions, groups = [], [], []
    for r in rows:
        caption = (r[ccol] or "").strip()
        if not caption or (base_only and "skin tone" in caption):
            continue
        p = root / (r[fcol] or "").strip()
        if not p.is_file():
            raise DfeditError(f"{path} names {r[fcol]!r}, which is not a file in {root}")
        images.append(decode_png(p.read_bytes(), str(p)))
        captions.append(caption)
        groups.append(base_of_caption(caption))
    if not images:
        raise DfeditError(f"{path} lists no images with captions")
    return images, captions, groups


# ---- split -------------------------------------------------------------------------------------

def _bucket(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32


def split(images: np.ndarray, groups: list[str], val_fraction: float) -> np.ndarray:
    """Validation mask by hash of the base emoji, with exact-duplicate images tied to one split.

    Union-find over rows joined by base emoji and by identical pixels; each component goes to the
    split its smallest base key hashes to, so no image appears (even as a copy) on both sides.
    """
    n = len(groups)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict = {}
    for i, key in enumerate(groups):
        for k in (("g", key), ("h", hashlib.sha1(images[i].tobytes()).hexdigest())):
            if k in first:
                parent[find(i)] = find(first[k])
            else:
                first[k] = i
    comp_key: dict[int, str] = {}
    for i, key in enumerate(groups):
        r = find(i)
        comp_key[r] = min(comp_key.get(r, key), key)
    return np.array([_bucket(comp_key[find(i)]) < val_fraction for i in range(n)], dtype=bool)


# ---- entry point -------------------------------------------------------------------------------

def _identity(path: Path) -> dict:
    """What the cache key depends on: the path and the size/mtime of the files that define it."""
    parts = [path] + [path / n for n in ("emoji.json", "package/emoji.json", "full_emoji.csv", "image")]
    parts += sorted(path.glob("*.csv")) if path.is_dir() else []
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in parts if p.exists()]
    return {"path": str(path.resolve()), "stats": stats}


@dataclass(frozen=True)
class Layout:
    """A data source: how to recognise its files and how to read them into rows.

    `detect(path)` says whether a path given to --data is laid out this way; `read(path, vendor,
    base_only)` returns (images, captions, groups): 64 px RGB arrays, one caption each, and the
    group each belongs to (the held-out split never separates a group)."""

    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, str, bool], tuple[list[np.ndarray], list[str], list[str]]]


LAYOUTS: list[Layout] = []  # tried in order; the first whose detect() says yes reads the path


def register_layout(name: str, detect: Callable[[Path], bool], read) -> Layout:
    """Add a data source (one reader plus this line): --data PATH picks it when `detect` says yes."""
    if any(lay.name == name for lay in LAYOUTS):
        raise ValueError(f"a data layout named {name!r} is already registered")
    layout = Layout(name, detect, read)
    LAYOUTS.insert(len(LAYOUTS) - 1 if LAYOUTS and LAYOUTS[-1].name == "folder" else len(LAYOUTS), layout)
    return layout


def _is_npm(path: Path) -> bool:
    if path.is_file():
        return tarfile.is_tarfile(path)
    return (path / "emoji.json").exists() or (path / "package" / "emoji.json").exists()


register_layout("npm", _is_npm, read_npm)
register_layout("kaggle", lambda path: path.is_dir() and (path / "full_emoji.csv").exists(), read_kaggle)
register_layout("folder", lambda path: path.is_dir(), lambda path, vendor, base_only: read_folder(path, base_only))


def resolve_source(source: str, vendor: str) -> tuple[Path, Layout]:
    """(path, layout) for a --data value: the npm download by default, else the first registered
    layout that recognises the path (a plain folder of images last)."""
    if vendor not in VENDORS:
        raise DfeditError(f"unknown vendor {vendor!r}: choose one of {', '.join(VENDORS)}")
    if source in ("", "npm"):
        return fetch_npm_package(vendor), layout_named("npm")
    path = Path(source).expanduser()
    if not path.exists():
        raise DfeditError(f"data path {path} does not exist")
    for layout in LAYOUTS:
        if layout.detect(path):
            return path, layout
    raise DfeditError(f"{path} is a file but not an npm tarball: pass a .tgz or a data folder")


def layout_named(name: str) -> Layout:
    return next(lay for lay in LAYOUTS if lay.name == name)


def load(source: str = "npm", vendor: str = "google", base_only: bool = False, val_fraction: float = 0.1,
         use_cache: bool = True) -> EmojiData:
    """Build (or read from the compressed cache) the dataset for one source."""
    path, lay = resolve_source(source, vendor)
    layout = lay.name
    key = hashlib.sha1(json.dumps([CACHE_VERSION, layout, _identity(path), vendor, base_only, val_fraction],
                                  sort_keys=True).encode()).hexdigest()[:16]
    cache = cache_root() / "data" / f"{layout}-{vendor}-{key}.npz"
    desc = f"{layout}:{path.name}" + (f" ({vendor})" if layout != "folder" else "")
    if use_cache and cache.exists():
        d = read_data_cache(cache, desc)
        if d is not None:
            return d
    try:
        images, captions, groups = lay.read(path, vendor, base_only)
    except DfeditError:
        if source not in ("", "npm") or not path.exists() or _tarball_ok(path):
            raise
        # the cached download itself is damaged (e.g. truncated by an older version): fetch it again
        notice(f"the cached npm tarball {path} is damaged; fetching it again")
        path.unlink()
        path = fetch_npm_package(vendor)
        images, captions, groups = lay.read(path, vendor, base_only)
    arr = np.stack(images)
    val = split(arr, groups, val_fraction)
    if use_cache:
        buf = io.BytesIO()
        np.savez_compressed(buf, images=arr, captions=np.array(captions), groups=np.array(groups), val=val)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(cache.parent)
            atomic_write(cache, buf.getvalue())  # a killed build never leaves a half cache behind
        except OSError as e:
            notice(f"{write_error(e, 'the data cache', cache, len(buf.getvalue()))}; continuing without the cache")
    return EmojiData(arr, captions, groups, val, desc)


def subset_mask(d: EmojiData, n_base: int) -> np.ndarray:
    """Rows to keep for a training subset: all of the validation split, and the training rows of
    `n_base` base emoji chosen by hash (the same ones for every run), so arms of a short ablation
    see many epochs of a few hundred emoji."""
    train_groups = sorted({g for g, v in zip(d.groups, d.val) if not v}, key=lambda g: _bucket("subset:" + g))
    keep = set(train_groups[:n_base])
    return np.array([bool(v) or g in keep for g, v in zip(d.groups, d.val)], dtype=bool)


def read_data_cache(cache: Path, desc: str) -> EmojiData | None:
    """The cached dataset, validated (every member's CRC, dtypes, shapes, matching lengths); None
    with a one-line notice, and the file removed, when it is damaged, so it is rebuilt."""
    try:
        st = cache.lstat()
        with np.load(cache, allow_pickle=False) as z:
            images, captions, groups, val = z["images"], z["captions"], z["groups"], z["val"]
        n = len(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (STORE_SIZE, STORE_SIZE, 3):
            why = f"images are {images.dtype} {images.shape}"
        elif captions.ndim != 1 or groups.ndim != 1 or val.ndim != 1 or val.dtype != bool:
            why = "captions, groups or split have the wrong type"
        elif not (len(captions) == len(groups) == len(val) == n) or n == 0:
            why = f"{n} images but {len(captions)} captions, {len(groups)} groups, {len(val)} split flags"
        elif captions.dtype.kind != "U" or groups.dtype.kind != "U":
            why = "captions are not text"
        else:
            return EmojiData(images, captions.tolist(), groups.tolist(), val, desc)
    except Exception as e:  # not a zip, CRC mismatch, missing member, pickled data...
        st = None
        why = (str(e).splitlines() or [type(e).__name__])[0]
    notice(f"the data cache {cache} is damaged ({why}); rebuilding it")
    discard(cache, st.st_ino if st is not None else None)
    return None


_NO_FLIP = re.compile(r"\b(left|right|flag|keycap|letter|clock|o.clock|arrow|button|sign|symbol|input|"
                      r"japanese|squared|circled|numbers?|ideograph|abc|abcd|sos|id|ok|cool|free|new|ng|top|"
                      r"soon|end|back|on|up!|vs)\b", re.I)


def flippable(captions: list[str]) -> np.ndarray:
    """Which images a horizontal flip leaves correct: nothing with a side, text, digits or a flag."""
    return np.array([_NO_FLIP.search(c) is None for c in captions], dtype=bool)


# ---- what a run trains from ----------------------------------------------------------------------

def prepare_data(dac, size: int, device) -> dict:
    """What a run of one drawing set trains from (DataConfig `dac`): the train/val tensors on the
    device at training resolution, caption embeddings and channel statistics (on_device).
    Several drawing sets: sets.prepare_sets."""
    d = load(dac.source, dac.vendor, dac.base_only, dac.val_fraction)
    if dac.vendor in LICENCE_WARNINGS:
        print(f"warning: {LICENCE_WARNINGS[dac.vendor]}", file=sys.stderr)
    if dac.subset:
        d = d.subset(subset_mask(d, dac.subset))
    train = d.subset(~d.val)
    if len(train) == 0:
        raise DfeditError("the training split is empty: add images or lower --val-fraction")
    enc = TextEncoder(dac.text_encoder, dac.max_length, device="cpu")
    states, mask = enc.embed(d.captions)
    tr, va = np.flatnonzero(~d.val), np.flatnonzero(d.val)
    return on_device(d.images, d.captions, tr, va, (states[tr], mask[tr]), (states[va], mask[va]), d.source, enc,
                     size, device)


def on_device(images, captions, tr, va, train_text, val_text, source: str, enc, size: int, device) -> dict:
    """What every run trains from: the rows `tr` and `va` of (images, captions) at training
    resolution on the device, their caption states and masks (`train_text`, `val_text`: (states,
    mask) aligned with tr and va), which rows a flip leaves correct, and the channel statistics."""
    def to_device(idx):
        return images_to_tensor(images[idx], size).contiguous().to(device)

    x_train = to_device(tr)
    return {
        "x": x_train, "text": train_text[0].to(device), "mask": train_text[1].to(device),
        "flip_ok": torch.from_numpy(flippable([captions[i] for i in tr])).to(device),
        "captions": [captions[i] for i in tr],
        "val_x": to_device(va), "val_text": val_text[0].to(device), "val_mask": val_text[1].to(device),
        "val_captions": [captions[i] for i in va],
        "mean": x_train.mean(dim=(0, 2, 3)).tolist(), "std": x_train.std(dim=(0, 2, 3)).tolist(),
        "source": source, "text_identity": enc.identity, "text_dim": int(train_text[0].shape[-1]),
    }
