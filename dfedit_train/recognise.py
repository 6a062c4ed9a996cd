"""Recognisability: does a model draw the emoji it is asked for?

No Inception or CLIP weights can be downloaded here, so the judge is a small classifier trained on
*another vendor's* drawings of the same emoji (Twitter's, CC-BY-4.0; skin-tone variants folded
into their base emoji) and never on a Google image. It is judged at the model's resolution:

    top-k on samples  /  top-k on the real Google images of the same emoji

is the headline ratio (1.0: the model's drawings are as recognisable as Google's own). The
classifier's accuracy on real Google images is the ceiling, because Twitter and Google draw many
emoji differently; dividing by it removes the judge's own blind spots from the score.

Beside it, the recall criterion of Gu et al. (TMLR 2025): a sample of a training caption counts as
recalled when its distance to that caption's training image is under 1/3 of its distance to any
other training image.

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

from dfedit.cache import cache_root
from dfedit.errors import DfeditError

from . import data as datamod
from .data import images_to_tensor, to_resolution  # noqa: F401  (images_to_tensor: also recognise's API)

CLASSIFIER_VERSION = 1

# Paraphrases a user might type, each with the CLDR caption of the emoji it asks for.
PARAPHRASES = [
    ("happy face", "grinning face"),
    ("a slice of pizza", "pizza"),
    ("a big red heart", "red heart"),
    ("face crying with laughter", "face with tears of joy"),
    ("heart eyes face", "smiling face with heart-eyes"),
    ("a puppy", "dog face"),
    ("a kitten", "cat face"),
    ("a rocket ship", "rocket"),
    ("a birthday cake with candles", "birthday cake"),
    ("the american flag", "flag: United States"),
    ("a pile of poop", "pile of poo"),
    ("a fire", "fire"),
    ("a red apple fruit", "red apple"),
    ("a yellow banana", "banana"),
    ("a cup of hot coffee", "hot beverage"),
    ("a football", "soccer ball"),
    ("a spooky ghost", "ghost"),
    ("a unicorn head", "unicorn"),
    ("a red car", "automobile"),
    ("an umbrella in the rain", "umbrella with rain drops"),
]


# ---- the classifier ------------------------------------------------------------------------------

@dataclass
class ClassifierConfig:
    resolution: int = 32
    width: int = 40
    epochs: int = 80
    batch_size: int = 128
    lr: float = 3e-3
    label_smoothing: float = 0.1
    seed: int = 0


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


def _twitter() -> datamod.EmojiData:
    return datamod.load("npm", "twitter")


def classifier_dir(cfg: ClassifierConfig) -> Path:
    key = hashlib.sha1(json.dumps([CLASSIFIER_VERSION, datamod.NPM_VERSION, asdict(cfg)],
                                  sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "recognise" / f"twitter-{cfg.resolution}px-{key}"


@torch.enable_grad()  # callers may run under no_grad (the metric itself does)
def train_classifier(cfg: ClassifierConfig, twitter: datamod.EmojiData | None = None, progress: bool = True,
                     log=print) -> tuple[Classifier, list[str]]:
    """Train the judge on every Twitter image (all of them: it must know every emoji); classes are
    base emoji (skin tones folded). Deterministic for a seed."""
    from dfedit.progress import progress_bar

    tw = twitter if twitter is not None else _twitter()
    classes = sorted(set(tw.groups))
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[gk] for gk in tw.groups])
    x64 = images_to_tensor(tw.images, 64)
    torch.manual_seed(cfg.seed)
    net = Classifier(len(classes), cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=5e-4)
    n = len(y)
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(cfg.seed)
    net.train()
    with progress_bar(steps, "training the recognisability classifier", enabled=progress) as bar:
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
    return net.eval(), classes


def load_classifier(cfg: ClassifierConfig | None = None, progress: bool = True, log=print) -> tuple[Classifier, list[str]]:
    """The cached judge for a resolution, trained on first use (minutes on a CPU)."""
    from safetensors.torch import load_file
    from safetensors.torch import save as st_save

    from dfedit.cache import atomic_write

    cfg = cfg or ClassifierConfig()
    d = classifier_dir(cfg)
    wf, mf = d / "classifier.safetensors", d / "classifier.json"
    if wf.exists() and mf.exists():
        try:
            meta = json.loads(mf.read_text())
            net = Classifier(len(meta["classes"]), meta["config"]["width"])
            net.load_state_dict(load_file(wf))
            return net.eval(), meta["classes"]
        except Exception as e:  # a damaged cache entry is rebuilt, never trusted
            log(f"note: rebuilding the recognisability classifier ({type(e).__name__} reading {d})")
    log(f"training the recognisability classifier at {cfg.resolution} px on Twitter's emoji (once; cached in {d})")
    net, classes = train_classifier(cfg, progress=progress, log=log)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(wf, st_save({k: v.contiguous() for k, v in net.state_dict().items()}))
    atomic_write(mf, json.dumps({"config": asdict(cfg), "classes": classes, "version": CLASSIFIER_VERSION}).encode())
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
    split: str  # "train", "held-out" or "paraphrase"
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
    and held-out split, plus the paraphrases. Skin-tone variants are left out: they fold into the
    same class as their base."""
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
        out.append(Prompt(text, r, d.groups[r], "paraphrase", cats.get(d.groups[r], "?")))
    return out


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


def summarise(ranks_s: torch.Tensor, ranks_r: torch.Tensor, recalled: torch.Tensor | None) -> dict:
    top1_s, top5_s = float((ranks_s < 1).float().mean()), float((ranks_s < 5).float().mean())
    top1_r, top5_r = float((ranks_r < 1).float().mean()), float((ranks_r < 5).float().mean())
    row = {"n": int(len(ranks_s)), "top1": top1_s, "top5": top5_s, "real_top1": top1_r, "real_top5": top5_r,
           "ratio_top1": top1_s / top1_r if top1_r else None, "ratio_top5": top5_s / top5_r if top5_r else None,
           # Where the right emoji lands among all classes: moves long before top-5 does, so short
           # runs can be told apart.
           "median_rank": float(ranks_s.float().median()) + 1 if len(ranks_s) else None}
    if recalled is not None:
        row["recall_gu"] = float(recalled.float().mean())
    return row


@torch.no_grad()
def recognisability(den, d: datamod.EmojiData, train_mask: np.ndarray, cats: dict[str, str], n_train: int = 200,
                    n_heldout: int = 200, seed: int = 0, stride: int = 20, guidance: float | None = None,
                    batch: int = 64, progress: bool = True, log=print,
                    classifier: tuple[Classifier, list[str]] | None = None, sample_fn=None,
                    paraphrases=PARAPHRASES, sampler: str | None = None, steps: int | None = None) -> dict:
    """Sample every prompt of the fixed set once (seeded per batch), classify at the model's
    resolution, and report top-1/top-5, the ratio to real Google images, and Gu et al.'s recall.
    Emoji the judge has no class for (absent from the other vendor) are left out and counted."""
    from .sample import sample

    size = den.sample_size
    net, classes = classifier or load_classifier(ClassifierConfig(resolution=size), progress=progress, log=log)
    cls_index = {c: i for i, c in enumerate(classes)}
    every = prompt_set(d, train_mask, cats, n_train, n_heldout, seed, paraphrases)
    prompts = [p for p in every if p.group in cls_index]
    guidance = guidance if guidance is not None else float(getattr(den, "default_cfg", 3.0))
    sample_fn = sample_fn or (lambda dn, caps, sd: sample(dn, caps, seed=sd, stride=stride, guidance=guidance,
                                                          sampler=sampler, steps=steps))
    xs = []
    from dfedit.progress import progress_bar
    with progress_bar(len(prompts), "sampling the recognisability prompts", enabled=progress) as bar:
        for i in range(0, len(prompts), batch):
            chunk = prompts[i:i + batch]
            xs.append(sample_fn(den, [p.caption for p in chunk], seed + i))
            bar.advance(len(chunk))
    xs = torch.cat(xs).float()
    labels = torch.tensor([cls_index[p.group] for p in prompts])
    real = images_to_tensor(d.images[[p.row for p in prompts]], size)
    r_s, r_r = ranks(net, xs, labels), ranks(net, real, labels)

    train_rows = np.flatnonzero(train_mask)
    bank = images_to_tensor(d.images[train_rows], size)
    pos = {r: i for i, r in enumerate(train_rows)}
    result = {"resolution": size, "sampler": sampler or "ddpm", "stride": None if steps else stride, "steps": steps,
              "guidance": guidance, "seed": seed, "rows": {},
              "left_out_no_class": len(every) - len(prompts)}
    for split in ("train", "held-out", "paraphrase"):
        sel = [i for i, p in enumerate(prompts) if p.split == split]
        if not sel:
            continue
        sel_t = torch.tensor(sel)
        rec = None
        if split == "train":
            rec = recall_gu(xs[sel_t], real[sel_t], bank, torch.tensor([pos[prompts[i].row] for i in sel]))
        result["rows"][split] = summarise(r_s[sel_t], r_r[sel_t], rec)
    cats = sorted({p.category for p in prompts if p.split != "paraphrase"})
    result["by_category"] = {}
    for c in cats:
        sel = torch.tensor([i for i, p in enumerate(prompts) if p.category == c and p.split != "paraphrase"])
        result["by_category"][c] = summarise(r_s[sel], r_r[sel], None)
    result["samples"] = [{"caption": p.caption, "split": p.split, "target": d.captions[p.row], "rank": int(r),
                          "real_rank": int(rr)} for p, r, rr in zip(prompts, r_s.tolist(), r_r.tolist())]
    result["_images"] = xs  # for grids; dropped before JSON
    result["_prompts"] = prompts
    return result
