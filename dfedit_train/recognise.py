"""Recognisability: does a model draw the emoji it is asked for, in more than one way, without copying?

No Inception or CLIP weights can be downloaded here, so the judge is a small classifier trained on
drawings no training set contains: Apple's and Facebook's (emoji-datasource-apple/-facebook, fetched
with `npm pack` at evaluation time, never shipped, never used to train or sample: their licences do
not allow that). Skin-tone variants fold into their base emoji; classes are keyed by
`data.normalise_code`, so any drawing set (Google, Twitter, Fluent, ...) maps onto them. It is
judged at the model's resolution:

    top-k on samples  /  top-k on that training set's real drawings of the same emoji

is the headline ratio (1.0: the model's drawings are as recognisable as the real ones): the
style's own set when a style is asked for, the mean over the model's training sets when not. The
judge's top-k on each set's real drawings is that set's ceiling (`ceiling`).

Beside it: Gu et al.'s recall (TMLR 2025: a sample closer to its caption's own training image than
1/3 of its distance to any other); the copy rate (`copy_flags`: the same 1/3 criterion against the
nearest training image of any set, and near copies under 2% RMSE); and diversity (`diversity`: the
spread of a prompt's recognised samples over seeds, divided by the spread of that emoji's real
drawings across styles).

This is for evaluation only: nothing in sampling or training ever calls it.
"""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfedit.constants import DEFAULT_SAMPLER
from dfedit.cache import cache_root
from dfedit.errors import DfeditError

from . import data as datamod
from .data import images_to_tensor, to_resolution  # noqa: F401  (images_to_tensor: also recognise's API)

CLASSIFIER_VERSION = 2  # 2: Apple + Facebook drawings, classes keyed by data.normalise_code
JUDGE_VENDORS = ("apple", "facebook")
TRAINING_SETS = ("google", "twitter")  # sets models may train on, whose ceilings are reported (Fluent: to come)
LICENCE_NOTE = ("note: the judge learns from Apple's and Facebook's emoji drawings (emoji-datasource-apple and "
                "-facebook 16.0.0), fetched for this evaluation only: never shipped, never used to train or sample")

PARAPHRASES_FILE = Path(__file__).with_name("paraphrases.json")


def load_paraphrases(path: Path = PARAPHRASES_FILE) -> list[tuple[str, str]]:
    """The frozen paraphrase set: [paraphrase, CLDR caption of the emoji it asks for] pairs, written
    before any model was trained on varied captions and never edited to suit one. None equals a
    CLDR name or short name of any emoji (tests/train/test_recognise.py checks)."""
    return [(str(p), str(t)) for p, t in json.loads(path.read_text(encoding="utf-8"))]


# What users type: "a thumbs up", "rocket ship", "heart eyes face", each with its target's caption.
PARAPHRASES = load_paraphrases()


# ---- the classifier ------------------------------------------------------------------------------

@dataclass
class ClassifierConfig:
    resolution: int = 32
    width: int = 48
    epochs: int = 80
    batch_size: int = 128
    lr: float = 3e-3
    label_smoothing: float = 0.1
    seed: int = 0
    val_fraction: float = 0.1  # of the base emoji: one judge set's drawings held out (judge_holdout)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Classifier(nn.Module):
    """A small CNN: a strided stem, three stages each halving the side, global pooling, a linear head.
    The stem works at half the resolution because full-resolution convolutions cost 10x more CPU
    for a judge that must train in minutes."""

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        w = width
        stem = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.features = nn.Sequential(stem, _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2), _block(4 * w, 8 * w, 2),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8 * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x in [-1, 1]
        return self.head(self.features(x))


def augment(x64: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Another vendor's drawing of the same emoji differs in outline, proportions and shading, and a
    model's sample is softer and noisier than either: random affine (white fill), brightness,
    contrast and saturation (never hue: a red and a blue heart are different emoji), blur, noise."""
    b = x64.shape[0]

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(b, generator=g)

    ang, sc = u(-0.2, 0.2), u(0.8, 1.15)
    tx, ty = u(-0.12, 0.12), u(-0.12, 0.12)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x64.shape), align_corners=False)
    x = F.grid_sample(x64 - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1  # white fill
    x = to_resolution(x, size)
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * u(0.7, 1.3).view(-1, 1, 1, 1)  # saturation
    m = x.mean((1, 2, 3), keepdim=True)
    x = m + (x - m) * u(0.75, 1.25).view(-1, 1, 1, 1) + u(-0.15, 0.15).view(-1, 1, 1, 1)  # contrast, brightness
    sigma = u(0.0, 1.0) * (size / 32)
    blur = sigma > 0.3
    if blur.any():  # a 5-tap Gaussian per image with its own sigma, applied separably
        k = torch.arange(-2, 3).float()
        kern = torch.exp(-k[None] ** 2 / (2 * sigma[:, None].clamp(min=0.3) ** 2))
        kern = kern / kern.sum(1, keepdim=True)
        xb = x[blur]
        kb = kern[blur]
        n = xb.shape[0]
        xb = xb.reshape(1, n * 3, size, size)
        kh = kb.repeat_interleave(3, 0).view(n * 3, 1, 1, 5)
        xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), kh, groups=n * 3)
        xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), kh.transpose(2, 3), groups=n * 3)
        x[blur] = xb.view(n, 3, size, size)
    x = x + torch.randn(x.shape, generator=g) * u(0.0, 0.1).view(-1, 1, 1, 1)
    return x.clamp(-1, 1)


def _judge_sets() -> dict[str, datamod.EmojiData]:
    """The judge's drawings: Apple's and Facebook's, fetched with `npm pack` at evaluation time."""
    return {v: datamod.load("npm", v) for v in JUDGE_VENDORS}


def judge_holdout(sets: dict[str, datamod.EmojiData], val_fraction: float) -> dict[str, np.ndarray]:
    """Rows each judge set keeps out of training to measure the judge: for `val_fraction` of the
    base emoji that two or more sets draw (by hash), every drawing (all tones) by one of those sets,
    also by hash. The other sets' drawings still teach the class, so the held-out drawings measure
    what the judge is for: naming an emoji drawn in a style it never saw for that emoji."""
    keys = {name: [datamod.normalise_code(g) for g in d.groups] for name, d in sets.items()}
    owners: dict[str, list[str]] = {}
    for name in sorted(sets):
        for k in dict.fromkeys(keys[name]):
            owners.setdefault(k, []).append(name)
    held = {}
    for k, names in owners.items():
        if len(names) > 1 and datamod._bucket("judge-val:" + k) < val_fraction:
            held[k] = names[int(datamod._bucket("judge-set:" + k) * len(names))]
    return {name: np.array([held.get(k) == name for k in keys[name]], dtype=bool) for name in sets}


def classifier_dir(cfg: ClassifierConfig) -> Path:
    key = hashlib.sha1(json.dumps([CLASSIFIER_VERSION, datamod.NPM_VERSION, JUDGE_VENDORS, asdict(cfg)],
                                  sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "recognise" / f"{'-'.join(JUDGE_VENDORS)}-{cfg.resolution}px-{key}"


def _as_sets(sets) -> dict[str, datamod.EmojiData]:
    if sets is None:
        return _judge_sets()
    if isinstance(sets, datamod.EmojiData):
        return {"judge": sets}
    return dict(sets)


@torch.enable_grad()  # callers may run under no_grad (the metric itself does)
def train_classifier(cfg: ClassifierConfig, sets=None, progress: bool = True,
                     log=print) -> tuple[Classifier, list[str]]:
    """Train the judge on the judge sets (default: Apple's and Facebook's; an EmojiData or a dict of
    them for tests) minus `judge_holdout`'s rows. Classes are base emoji keyed by
    `data.normalise_code` (skin tones folded), so any drawing set maps onto them; every class of
    every set is kept, held-out rows included. Deterministic for a seed. The judge's accuracy on its
    held-out drawings is left in `net.val_accuracy` ({"n", "top1", "top5"})."""
    from dfedit.progress import progress_bar

    sets = _as_sets(sets)
    held = judge_holdout(sets, cfg.val_fraction) if cfg.val_fraction > 0 else \
        {n: np.zeros(len(d), dtype=bool) for n, d in sets.items()}
    classes = sorted({datamod.normalise_code(g) for d in sets.values() for g in d.groups})
    index = {c: i for i, c in enumerate(classes)}
    names = sorted(sets)
    y_all = torch.tensor([index[datamod.normalise_code(g)] for n in names for g in sets[n].groups])
    x_all = torch.cat([images_to_tensor(sets[n].images, 64) for n in names])
    is_val = torch.from_numpy(np.concatenate([held[n] for n in names]))
    x64, y = x_all[~is_val], y_all[~is_val]
    torch.manual_seed(cfg.seed)
    net = Classifier(len(classes), cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=5e-4)
    n = len(y)
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(cfg.seed)
    net.train()
    with progress_bar(steps, "training the recognisability judge", enabled=progress) as bar:
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                xb = augment(x64[idx], cfg.resolution, g)
                loss = F.cross_entropy(net(xb), y[idx], label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.advance()
    net.eval()
    val = {"n": int(is_val.sum())}
    if val["n"]:
        r = ranks(net, to_resolution(x_all[is_val], cfg.resolution), y_all[is_val])
        val.update(top1=float((r < 1).float().mean()), top5=float((r < 5).float().mean()))
    net.val_accuracy, net.classes = val, classes
    return net, classes


def load_classifier(cfg: ClassifierConfig | None = None, progress: bool = True, log=print) -> tuple[Classifier, list[str]]:
    """The cached judge for a resolution, trained on first use (about half an hour on one CPU
    thread). Prints the licence note whenever the judge's drawings are read."""
    from safetensors.torch import load_file
    from safetensors.torch import save as st_save

    from dfedit.files import atomic_write

    cfg = cfg or ClassifierConfig()
    d = classifier_dir(cfg)
    wf, mf = d / "classifier.safetensors", d / "classifier.json"
    if wf.exists() and mf.exists():
        try:
            meta = json.loads(mf.read_text())
            net = Classifier(len(meta["classes"]), meta["config"]["width"])
            net.load_state_dict(load_file(wf))
            net.val_accuracy, net.classes = meta.get("val_accuracy"), meta["classes"]
            return net.eval(), meta["classes"]
        except Exception as e:  # a damaged cache entry is rebuilt, never trusted
            log(f"note: rebuilding the recognisability judge ({type(e).__name__} reading {d})")
    log(LICENCE_NOTE)
    log(f"training the recognisability judge at {cfg.resolution} px on {' and '.join(JUDGE_VENDORS)} emoji "
        f"(once; cached in {d})")
    net, classes = train_classifier(cfg, progress=progress, log=log)
    va = net.val_accuracy
    if va.get("n"):
        log(f"judge accuracy on its {va['n']} held-out drawings: top-1 {va['top1']:.3f}, top-5 {va['top5']:.3f}")
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(wf, st_save({k: v.contiguous() for k, v in net.state_dict().items()}))
    atomic_write(mf, json.dumps({"config": asdict(cfg), "classes": classes, "version": CLASSIFIER_VERSION,
                                 "vendors": list(JUDGE_VENDORS), "val_accuracy": va}).encode())
    return net, classes


@torch.no_grad()
def ranks(net: Classifier, x: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Rank (0 = top-1) of the true class for each image in [-1, 1]."""
    out = []
    for i in range(0, x.shape[0], batch):
        logits = net(x[i:i + batch].float())
        true = logits.gather(1, labels[i:i + batch, None])
        out.append((logits > true).sum(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


# ---- the prompt set ------------------------------------------------------------------------------

def categories(path: Path) -> dict[str, str]:
    """Base emoji (unified code) -> Unicode category, read from an npm tarball's emoji.json."""
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.name.endswith("/emoji.json") or m.name == "emoji.json":
                    return {e["unified"]: e.get("category", "?") for e in json.load(tf.extractfile(m))}
    except (tarfile.TarError, OSError, json.JSONDecodeError) as e:
        raise DfeditError(f"could not read emoji categories from {path}: {e}") from None
    raise DfeditError(f"{path} has no emoji.json")


@dataclass
class Prompt:
    caption: str
    row: int  # row of the target emoji's (base) image in the model's data
    group: str  # base emoji = the classifier's class
    split: str  # "train", "held-out", "paraphrase" (of a trained emoji) or "paraphrase-held-out"
    category: str


def _stratified(rows: list[int], cats: list[str], n: int, rng: np.random.Generator) -> list[int]:
    """n rows, allocated to categories in proportion to their size (largest remainder, at least one
    per category), chosen at random within each category."""
    if n <= 0:
        return []
    if n >= len(rows):
        return sorted(rows)
    by: dict[str, list[int]] = {}
    for r, c in zip(rows, cats):
        by.setdefault(c, []).append(r)
    names = sorted(by)
    share = {c: n * len(by[c]) / len(rows) for c in names}
    floor = 1 if n >= len(names) else 0  # at least one per category when there is room for it
    alloc = {c: max(floor, int(share[c])) for c in names}
    for c in sorted(names, key=lambda c: share[c] - int(share[c]), reverse=True):
        if sum(alloc.values()) >= n:
            break
        alloc[c] += 1
    while sum(alloc.values()) > n:  # the floor of one overshot: take back from the largest share
        alloc[max(names, key=lambda c: alloc[c])] -= 1
    out = []
    for c in names:
        out += rng.permutation(by[c])[:min(alloc[c], len(by[c]))].tolist()
    return sorted(out)


def prompt_set(d: datamod.EmojiData, train_mask: np.ndarray, cats: dict[str, str], n_train: int = 200,
               n_heldout: int = 200, seed: int = 0, paraphrases=PARAPHRASES) -> list[Prompt]:
    """Base-emoji captions (one per emoji), stratified by category, from the model's training split
    and held-out split, plus the paraphrases (split by whether their target emoji was trained on).
    Skin-tone variants are left out: they fold into the same class as their base."""
    rng = np.random.default_rng(seed)
    base_rows = [i for i, c in enumerate(d.captions) if datamod.base_of_caption(c) == c]
    out = []
    for split, mask, n in (("train", train_mask, n_train), ("held-out", d.val, n_heldout)):
        rows = [i for i in base_rows if mask[i]]
        for r in _stratified(rows, [cats.get(d.groups[i], "?") for i in rows], n, rng):
            out.append(Prompt(d.captions[r], r, d.groups[r], split, cats.get(d.groups[r], "?")))
    where = {c: i for i, c in enumerate(d.captions)}
    for text, target in paraphrases:
        if target not in where:  # another data set: paraphrases of emoji it does not have are skipped
            continue
        r = where[target]
        split = "paraphrase" if train_mask[r] else "paraphrase-held-out"  # scored apart
        out.append(Prompt(text, r, d.groups[r], split, cats.get(d.groups[r], "?")))
    return out


# ---- real drawings: the ceiling and the spread across styles ----------------------------------------

# A drawing set as the metric sees it: (N, 64, 64, 3) uint8 base drawings and their class keys
# (data.normalise_code of the base emoji's unified code), one drawing per key.
RealSet = tuple[np.ndarray, list[str]]

SPLITS = ("train", "held-out", "paraphrase", "paraphrase-held-out")


def real_set(d: datamod.EmojiData, mask: np.ndarray | None = None) -> RealSet:
    """An EmojiData's base drawings (skin-tone variants left out; the first drawing of each key),
    optionally only the rows in `mask`."""
    seen, rows = set(), []
    for i, (c, g) in enumerate(zip(d.captions, d.groups)):
        k = datamod.normalise_code(g)
        if (mask is None or mask[i]) and datamod.base_of_caption(c) == c and k not in seen:
            seen.add(k)
            rows.append(i)
    return d.images[rows], [datamod.normalise_code(d.groups[i]) for i in rows]


def real_ranks(net: Classifier, classes: list[str], rs: RealSet, keys: list[str], size: int) -> torch.Tensor:
    """The judge's rank of the right class on a set's drawing of each key; -1 where the set has no
    drawing of it or the judge no class."""
    images, set_keys = rs
    where = {k: i for i, k in enumerate(set_keys)}
    index = {c: i for i, c in enumerate(classes)}
    ok = [i for i, k in enumerate(keys) if k in where and k in index]
    out = torch.full((len(keys),), -1, dtype=torch.long)
    if ok:
        x = images_to_tensor(images[[where[keys[i]] for i in ok]], size)
        out[torch.tensor(ok)] = ranks(net, x, torch.tensor([index[keys[i]] for i in ok]))
    return out


def _topk(r: torch.Tensor) -> dict:
    r = r[r >= 0]
    if not len(r):
        return {"n": 0, "top1": None, "top5": None}
    return {"n": int(len(r)), "top1": float((r < 1).float().mean()), "top5": float((r < 5).float().mean())}


def ceiling(net: Classifier, sets: dict[str, RealSet], classes: list[str] | None = None, size: int = 32,
            keys: list[str] | None = None) -> dict[str, dict]:
    """The judge's top-1/top-5 on each drawing set's real images (all of its keys, or only `keys`):
    the best a model drawing in that style can score. {set: {"n", "top1", "top5", "no_class"}}."""
    classes = classes if classes is not None else net.classes
    known = set(classes)
    out = {}
    for name, rs in sets.items():
        ks = list(rs[1]) if keys is None else [k for k in keys if k in set(rs[1])]
        row = _topk(real_ranks(net, classes, rs, ks, size))
        row["no_class"] = sum(k not in known for k in ks)
        out[name] = row
    return out


def _rmse_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """RMSE in [0, 1] pixel units between every image of x and of y (both in [-1, 1])."""
    a, b = (x.flatten(1).double() + 1) / 2, (y.flatten(1).double() + 1) / 2
    return torch.cdist(a, b).div(math.sqrt(a.shape[1]))


def pairwise_rmse(x: torch.Tensor, size: int = 32) -> float:
    """Mean RMSE (in [0, 1] pixel units, at `size` px) over all pairs of images of x ([-1, 1]);
    nan for fewer than two."""
    if x.shape[0] < 2:
        return math.nan
    x = to_resolution(x.float(), size)
    d = _rmse_matrix(x, x)
    i, j = torch.triu_indices(len(x), len(x), 1)
    return float(d[i, j].mean())


def real_spread(sets: dict[str, RealSet], size: int = 32) -> dict[str, float]:
    """For every key drawn by two or more sets: the mean pairwise RMSE among its drawings (one per
    set), i.e. how much the emoji's real drawings vary across styles."""
    by: dict[str, list[np.ndarray]] = {}
    for images, keys in sets.values():
        for im, k in zip(images, keys):
            by.setdefault(k, []).append(im)
    return {k: pairwise_rmse(images_to_tensor(np.stack(v), size), size) for k, v in by.items() if len(v) > 1}


def diversity(samples: torch.Tensor, recognised: torch.Tensor, keys: list[str], spread: dict[str, float],
              size: int = 32) -> dict:
    """How much a prompt's samples differ, relative to how much its emoji's real drawings do.

    samples: (P, S, 3, H, W) in [-1, 1], S seeds of each of P prompts; recognised: (P, S) bool,
    the judge's top-5 holds the right emoji; keys: each prompt's class key; spread: real_spread().
    Per prompt: the mean pairwise RMSE at `size` px among its recognised samples (0 when fewer than
    two are recognised: nothing recognisable varies), divided by its emoji's real spread; prompts
    whose emoji has no real spread are left out. Returns the mean ratio ("diversity") and its parts."""
    ratios, spreads, reals, per = [], [], [], []
    for p, k in enumerate(keys):
        ok = recognised[p].bool()
        sp = pairwise_rmse(samples[p][ok], size) if int(ok.sum()) >= 2 else 0.0
        real = spread.get(k)
        ratio = sp / real if real is not None and real > 0 and math.isfinite(real) else None
        per.append({"key": k, "recognised": int(ok.sum()), "spread": sp, "real_spread": real, "ratio": ratio})
        if ratio is not None:
            ratios.append(ratio)
            spreads.append(sp)
            reals.append(real)
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"diversity": mean(ratios), "n_prompts": len(ratios), "n_seeds": int(samples.shape[1]),
            "spread": mean(spreads), "real_spread": mean(reals),
            "recognised": float(recognised.float().mean()) if recognised.numel() else None, "per_prompt": per}


NEAR_COPY_RMSE = 0.02  # in [0, 1] pixel units: visually the same picture at 32 px


def copy_flags(samples: torch.Tensor, bank: torch.Tensor, size: int = 32, batch: int = 256) -> dict[str, torch.Tensor]:
    """Per sample: "gu": Gu et al.'s criterion, L2 to the nearest training image < 1/3 of the L2 to
    the second-nearest *different* training image (exact duplicates in the bank, such as flags
    sharing a design or one emoji drawn alike by two sets, count once); "near": RMSE to the nearest
    training image under NEAR_COPY_RMSE; "copy": either. bank: every training image of every set,
    (M, 3, h, w) in [-1, 1]; both are compared at `size` px."""
    x = to_resolution(samples.float(), size)
    b = torch.unique(to_resolution(bank.float(), size).flatten(1), dim=0)
    d1s, d2s = [], []
    for i in range(0, len(x), batch):
        d = _rmse_matrix(x[i:i + batch], b)
        if d.shape[1] >= 2:
            two = d.topk(2, dim=1, largest=False).values
            d1s.append(two[:, 0])
            d2s.append(two[:, 1])
        else:  # one distinct training image: there is no second to compare with
            d1s.append(d.min(dim=1).values if d.shape[1] else torch.full((len(d),), math.inf, dtype=d.dtype))
            d2s.append(torch.full((len(d),), math.nan, dtype=d.dtype))
    d1 = torch.cat(d1s) if d1s else torch.zeros(0, dtype=torch.double)
    d2 = torch.cat(d2s) if d2s else torch.zeros(0, dtype=torch.double)
    gu, near = d1 < d2 / 3, d1 < NEAR_COPY_RMSE
    return {"gu": gu, "near": near, "copy": gu | near, "nn_rmse": d1.float()}


def copy_rate(samples: torch.Tensor, bank: torch.Tensor, size: int = 32) -> dict:
    """Fractions of samples that copy a training image (copy_flags): {"n", "gu", "near", "copy",
    "nn_rmse_median"}."""
    f = copy_flags(samples, bank, size)
    n = len(f["gu"])
    if not n:
        return {"n": 0, "gu": None, "near": None, "copy": None, "nn_rmse_median": None}
    return {"n": n, "gu": float(f["gu"].float().mean()), "near": float(f["near"].float().mean()),
            "copy": float(f["copy"].float().mean()), "nn_rmse_median": float(f["nn_rmse"].median())}


# ---- the metric ----------------------------------------------------------------------------------

def recall_gu(samples: torch.Tensor, own: torch.Tensor, bank: torch.Tensor, own_index: torch.Tensor) -> torch.Tensor:
    """Gu et al.'s criterion per sample: L2 to its own training image < 1/3 of the L2 to the nearest
    *other* training image. `own_index` is each own image's row in `bank`; exact copies of the own
    image under another caption (flags sharing a design) do not count as other images."""
    d = torch.cdist(samples.flatten(1).double(), bank.flatten(1).double())
    d_own = (samples - own).flatten(1).double().norm(dim=1)
    copies = torch.cdist(own.flatten(1).double(), bank.flatten(1).double()) == 0
    copies[torch.arange(len(d)), own_index] = True
    d[copies] = math.inf
    return d_own < d.min(dim=1).values / 3


def summarise(ranks_s: torch.Tensor, ranks_r: torch.Tensor | None, recalled: torch.Tensor | None = None,
              real_by_set: dict[str, torch.Tensor] | None = None, style: str | None = None,
              copies: dict[str, torch.Tensor] | None = None) -> dict:
    """One row of the table. The real top-k (the ratio's denominator) is ranks_r's, or with
    real_by_set ({set: the judge's rank on that set's drawing of each prompt's emoji, -1 where it
    has none}) that style's own when a style was asked for, else the mean over the sets."""
    top1_s, top5_s = float((ranks_s < 1).float().mean()), float((ranks_s < 5).float().mean())
    by = None
    if real_by_set is not None:
        by = {name: _topk(r) for name, r in real_by_set.items()}
        if style is not None:
            if style not in by:
                raise DfeditError(f"no real drawings of style {style!r} to compare with (have: {', '.join(by)})")
            use = [by[style]]
        else:
            use = [v for v in by.values() if v["n"]]
        top1_r = float(np.mean([v["top1"] for v in use])) if use and use[0]["n"] else 0.0
        top5_r = float(np.mean([v["top5"] for v in use])) if use and use[0]["n"] else 0.0
    else:
        top1_r, top5_r = float((ranks_r < 1).float().mean()), float((ranks_r < 5).float().mean())
    row = {"n": int(len(ranks_s)), "top1": top1_s, "top5": top5_s, "real_top1": top1_r, "real_top5": top5_r,
           "ratio_top1": top1_s / top1_r if top1_r else None, "ratio_top5": top5_s / top5_r if top5_r else None,
           # Where the right emoji lands among all classes: moves long before top-5 does, so short
           # runs can be told apart.
           "median_rank": float(ranks_s.float().median()) + 1 if len(ranks_s) else None}
    if by is not None:
        row["real_by_set"] = by
    if recalled is not None:
        row["recall_gu"] = float(recalled.float().mean())
    if copies is not None:
        row["copy_gu"] = float(copies["gu"].float().mean())
        row["copy_near"] = float(copies["near"].float().mean())
        row["copy"] = float(copies["copy"].float().mean())
    return row


def _spread_rows(rows: list[int], n: int) -> list[int]:
    """n rows spread evenly over a list (sorted by category, so every category gets its share)."""
    if n >= len(rows):
        return list(rows)
    return [rows[int(i * len(rows) / n)] for i in range(n)]


@torch.no_grad()
def recognisability(den, d: datamod.EmojiData, train_mask: np.ndarray, cats: dict[str, str], n_train: int = 200,
                    n_heldout: int = 200, seed: int = 0, stride: int = 20, guidance: float | None = None,
                    batch: int = 64, progress: bool = True, log=print,
                    classifier: tuple[Classifier, list[str]] | None = None, sample_fn=None,
                    paraphrases=PARAPHRASES, sampler: str | None = None, steps: int | None = None,
                    real_sets: dict[str, RealSet] | None = None, ceiling_sets: dict[str, RealSet] | None = None,
                    copy_bank: torch.Tensor | None = None, style: str | None = None, n_diversity: int = 50,
                    n_seeds: int = 8) -> dict:
    """Sample every prompt of the fixed set once (seeded per batch), classify at the model's
    resolution, and report per split top-1/top-5, the ratio to real drawings, Gu et al.'s recall
    and the copy rate; then the judge's ceiling on each set, and diversity: `n_diversity` training
    captions x `n_seeds` seeds.

    real_sets: the model's training sets ({name: RealSet}; default: d's own base drawings under the
    name "data"), the ratio's denominator: `style`'s set when a style is asked for, else the mean
    over them. ceiling_sets: the sets whose ceiling is reported and across which an emoji's real
    spread is measured (default: real_sets). copy_bank: every training image of every set, (M, 3,
    h, w) in [-1, 1] (default: d's rows in train_mask). sample_fn(den, captions, seed) -> samples.
    Emoji the judge has no class for are left out and counted."""
    from dfedit.progress import progress_bar

    from .sample import sample

    size = den.sample_size
    net, classes = classifier or load_classifier(ClassifierConfig(resolution=size), progress=progress, log=log)
    cls_index = {c: i for i, c in enumerate(classes)}
    key = datamod.normalise_code
    real_sets = real_sets if real_sets is not None else {"data": real_set(d)}
    ceiling_sets = ceiling_sets if ceiling_sets is not None else real_sets
    if style is not None and style not in real_sets:
        raise DfeditError(f"no real drawings of style {style!r} to compare with (have: {', '.join(real_sets)})")
    every = prompt_set(d, train_mask, cats, n_train, n_heldout, seed, paraphrases)
    prompts = [p for p in every if key(p.group) in cls_index]
    train_p = [i for i, p in enumerate(prompts) if p.split == "train"]
    div_p = _spread_rows(train_p, n_diversity) if n_seeds >= 2 else []
    guidance = guidance if guidance is not None else float(getattr(den, "default_cfg", 3.0))
    sample_fn = sample_fn or (lambda dn, caps, sd: sample(dn, caps, seed=sd, stride=stride, guidance=guidance,
                                                          sampler=sampler, steps=steps))
    jobs = [(i, [p.caption for p in prompts[i:i + batch]], seed + i) for i in range(0, len(prompts), batch)]
    for s in range(n_seeds if div_p else 0):  # the diversity prompts, once per seed
        caps = [prompts[i].caption for i in div_p]
        jobs += [(None, caps[j:j + batch], seed + 100_003 * (s + 1) + j) for j in range(0, len(caps), batch)]
    xs, div_x = [], []
    with progress_bar(sum(len(c) for _, c, _ in jobs), "sampling the recognisability prompts",
                      enabled=progress) as bar:
        for first, caps, sd in jobs:
            x = sample_fn(den, caps, sd).float()
            (xs if first is not None else div_x).append(x)
            bar.advance(len(caps))
    xs = torch.cat(xs) if xs else torch.zeros(0, 3, size, size)
    keys = [key(p.group) for p in prompts]
    labels = torch.tensor([cls_index[k] for k in keys], dtype=torch.long)
    r_s = ranks(net, xs, labels)
    real_r = {name: real_ranks(net, classes, rs, keys, size) for name, rs in real_sets.items()}
    own = images_to_tensor(d.images[[p.row for p in prompts]], size)

    train_rows = np.flatnonzero(train_mask)
    bank_own = images_to_tensor(d.images[train_rows], size)
    bank = copy_bank if copy_bank is not None else bank_own
    flags = copy_flags(xs, bank, size)
    pos = {r: i for i, r in enumerate(train_rows)}
    result = {"resolution": size, "sampler": sampler or DEFAULT_SAMPLER, "stride": None if steps else stride, "steps": steps,
              "guidance": guidance, "seed": seed, "style": style, "real_sets": list(real_sets), "rows": {},
              "left_out_no_class": len(every) - len(prompts)}
    for split in SPLITS:
        sel = [i for i, p in enumerate(prompts) if p.split == split]
        if not sel:
            continue
        sel_t = torch.tensor(sel)
        rec = None
        if split == "train":
            rec = recall_gu(xs[sel_t], own[sel_t], bank_own, torch.tensor([pos[prompts[i].row] for i in sel]))
        result["rows"][split] = summarise(r_s[sel_t], None, rec, {n: r[sel_t] for n, r in real_r.items()}, style,
                                          {k: v[sel_t] for k, v in flags.items()})
    cats_ = sorted({p.category for p in prompts if not p.split.startswith("paraphrase")})
    result["by_category"] = {}
    for c in cats_:
        sel = torch.tensor([i for i, p in enumerate(prompts) if p.category == c and not p.split.startswith("paraphrase")])
        result["by_category"][c] = summarise(r_s[sel], None, None, {n: r[sel] for n, r in real_r.items()}, style)
    result["ceiling"] = ceiling(net, ceiling_sets, classes, size)
    if div_x:
        dx = torch.cat(div_x).view(n_seeds, len(div_p), *xs.shape[1:]).transpose(0, 1)  # (prompt, seed, ...)
        dk = [keys[i] for i in div_p]
        dr = ranks(net, dx.flatten(0, 1), labels[torch.tensor(div_p)].repeat_interleave(n_seeds)).view(len(div_p), -1)
        cmp = min(32, size)  # at 32 px (a 16 px test model's at its own size): real and samples alike
        div = diversity(dx, dr < 5, dk, real_spread(ceiling_sets, cmp), cmp)
        div["captions"] = [prompts[i].caption for i in div_p]
        div["copies"] = copy_rate(dx.flatten(0, 1), bank, size)
        result["diversity"] = div
        result["_diversity_images"] = dx  # (prompt, seed, 3, H, W), for the sheet; dropped before JSON
    result["samples"] = [{"caption": p.caption, "split": p.split, "target": d.captions[p.row], "rank": int(r),
                          **{f"real_rank_{n}": int(rr[i]) for n, rr in real_r.items()}, "copy": bool(flags["copy"][i])}
                         for i, (p, r) in enumerate(zip(prompts, r_s.tolist()))]
    result["_images"] = xs  # for grids; dropped before JSON
    result["_prompts"] = prompts
    return result
