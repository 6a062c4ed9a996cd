"""Does a model trained on several drawing sets generalise, or recall? The table of `dfedit-train
recognise` for such models (dfedit_train/sets.py), built from recognise.py's judge and measures.

Prompts, all fixed by the data config's hashes (the same for every model judged on them):
  * train      - base emoji trained on, once per style the model knows (their ratio's denominator:
                 the judge's top-5 on that set's real drawings) and once with no style ("any": the
                 mean over the sets that draw it);
  * tone-pair  - (emoji, skin tone) pairs never trained in any set; besides the judge (which folds
                 tones), the tone is checked: the sample's nearest drawing among that emoji's tone
                 variants (any set) must have the asked tone;
  * style-pair - (emoji, set) pairs never trained, asked for in that set's style;
  * unseen     - base emoji never trained (ablations only: the shipped model trains on every emoji);
  * paraphrase - the frozen paraphrases (recognise.load_paraphrases) of trained emoji, and apart
                 of unseen ones.
Then diversity (training captions x seeds, no style) and the copy rate of those samples against
every training image of every set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dfedit.constants import DEFAULT_SAMPLER

from . import recognise as rec
from . import sets as setsmod
from .data import images_to_tensor


@dataclass
class GPrompt:
    caption: str
    key: str  # the judge's class: the base emoji's normalised code
    split: str  # train | tone-pair | style-pair | unseen | paraphrase | paraphrase-unseen
    style: str | None  # asked for (None: any)
    row: int  # the table row of the drawing it asks for (its own style's, else the first set's)
    tone: str = ""


def row_name(p: GPrompt) -> str:
    """The row of the table a prompt counts in: its split, training captions once per style."""
    return f"train ({p.style or 'any style'})" if p.split == "train" else p.split


def _pick(keys: list[str], n: int, salt: str) -> list[str]:
    return sorted(keys, key=lambda k: setsmod._bucket(f"{salt}:{k}"))[:n]


def prompts_for(ms: setsmod.MultiSet, split: list[str], styles: tuple[str, ...], n_train: int = 100,
                n_pairs: int = 100, n_unseen: int = 100, paraphrases=None) -> list[GPrompt]:
    key = setsmod.normalise_code
    base_train: dict[str, dict[str, int]] = {}  # key -> style -> row, base drawings trained on
    for i, (c, t, s) in enumerate(zip(ms.captions, ms.tones, split)):
        if not t and not s:
            base_train.setdefault(key(ms.groups[i]), {})[ms.styles[i]] = i
    out: list[GPrompt] = []
    for k in _pick(sorted(base_train), n_train, "train"):
        rows = base_train[k]
        first = rows[sorted(rows)[0]]
        for s in styles:
            if s in rows:
                out.append(GPrompt(ms.captions[rows[s]], k, "train", s, rows[s]))
        out.append(GPrompt(ms.captions[first], k, "train", None, first))
    tone_rows: dict[tuple[str, str], int] = {}
    for i, (t, s) in enumerate(zip(ms.tones, split)):
        if s == "tone-pair":
            tone_rows.setdefault((ms.groups[i], t), i)
    for g, t in _pick(sorted(tone_rows), n_pairs, "tone"):
        i = tone_rows[(g, t)]
        out.append(GPrompt(ms.captions[i], key(g), "tone-pair", None, i, t))
    style_rows = {(ms.groups[i], ms.styles[i]): i for i, s in enumerate(split) if s == "style-pair" and not ms.tones[i]}
    for g, s in _pick(sorted(style_rows), n_pairs, "style"):
        i = style_rows[(g, s)]
        out.append(GPrompt(ms.captions[i], key(g), "style-pair", s if s in styles else None, i))
    unseen = {}
    for i, s in enumerate(split):
        if s == "unseen" and not ms.tones[i]:
            unseen.setdefault(key(ms.groups[i]), i)
    for k in _pick(sorted(unseen), n_unseen, "unseen"):
        out.append(GPrompt(ms.captions[unseen[k]], k, "unseen", None, unseen[k]))
    by_caption = {}
    for i, c in enumerate(ms.captions):
        if not ms.tones[i]:
            by_caption.setdefault(c, i)
    trained_keys = set(base_train)
    for text, target in (paraphrases if paraphrases is not None else rec.load_paraphrases()):
        if target in by_caption:
            i = by_caption[target]
            k = key(ms.groups[i])
            out.append(GPrompt(text, k, "paraphrase" if k in trained_keys else "paraphrase-unseen", None, i))
    return out


def real_sets_of(ms: setsmod.MultiSet) -> dict[str, rec.RealSet]:
    """Each set's base drawings (held-out ones included: the denominator is how recognisable the
    real drawing is, whether or not the model saw it)."""
    out = {}
    for s in dict.fromkeys(ms.styles):
        rows = [i for i, (st, t) in enumerate(zip(ms.styles, ms.tones)) if st == s and not t]
        out[s] = (ms.images[rows], [setsmod.normalise_code(ms.groups[i]) for i in rows])
    return out


def tone_accuracy(samples: torch.Tensor, prompts: list[GPrompt], ms: setsmod.MultiSet, size: int) -> dict:
    """Per tone-pair prompt: is the nearest (RMSE) of that emoji's single-tone drawings, over every
    set, one of the asked tone? Chance is one over the number of tones drawn."""
    hits, chance = [], []
    for x, p in zip(samples, prompts):
        rows = [i for i in range(len(ms)) if ms.groups[i] == ms.groups[p.row] and ms.tones[i]
                and "-" not in ms.tones[i]]
        tones = sorted({ms.tones[i] for i in rows})
        if p.tone not in tones or len(tones) < 2:
            continue
        real = images_to_tensor(ms.images[rows], size)
        d = (real - x[None]).flatten(1).pow(2).mean(1)
        hits.append(ms.tones[rows[int(d.argmin())]] == p.tone)
        chance.append(1 / len(tones))
    return {"n": len(hits), "tone_accuracy": float(np.mean(hits)) if hits else None,
            "chance": float(np.mean(chance)) if chance else None}


def _row(r_s: torch.Tensor, real1: list[float], real5: list[float]) -> dict:
    top1, top5 = float((r_s < 1).float().mean()), float((r_s < 5).float().mean())
    rt1, rt5 = float(np.mean(real1)), float(np.mean(real5))
    return {"n": int(len(r_s)), "top1": top1, "top5": top5, "real_top1": rt1, "real_top5": rt5,
            "ratio_top1": top1 / rt1 if rt1 else None, "ratio_top5": top5 / rt5 if rt5 else None,
            "median_rank": float(r_s.float().median()) + 1 if len(r_s) else None}


@torch.no_grad()
def evaluate(den, ms: setsmod.MultiSet, split: list[str], *, classifier=None, n_train: int = 100,
             n_pairs: int = 100, n_unseen: int = 100, n_diversity: int = 50, n_seeds: int = 8, seed: int = 0,
             stride: int = 30, sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
             batch: int = 64, progress: bool = True, log=print, paraphrases=None, sample_fn=None) -> dict:
    """The generalisation table for `den` on the prompts of (ms, split) (module docstring).
    sample_fn(den, captions, seed, style) -> images in [-1, 1] replaces sampling (tests)."""
    from dfedit.progress import progress_bar

    from .sample import sample

    size = den.sample_size
    net, classes = classifier or rec.load_classifier(rec.ClassifierConfig(resolution=size), progress=progress, log=log)
    cls = {c: i for i, c in enumerate(classes)}
    styles = tuple(getattr(den, "styles", ()) or ())
    every = prompts_for(ms, split, styles, n_train, n_pairs, n_unseen, paraphrases)
    prompts = [p for p in every if p.key in cls]
    train_any = [i for i, p in enumerate(prompts) if p.split == "train" and p.style is None]
    div = [prompts[i] for i in rec._spread_rows(train_any, n_diversity)] if n_seeds >= 2 else []
    guidance = guidance if guidance is not None else float(getattr(den, "default_cfg", 3.0))
    xs = torch.zeros(len(prompts), 3, size, size)
    dx = torch.zeros(len(div), n_seeds, 3, size, size)  # (diversity caption, seed, ...)
    jobs = []  # (style, captions, seed, (tensor, index) the samples are stored at)
    for st in [None, *styles]:
        idx = [i for i, p in enumerate(prompts) if p.style == st]
        for j in range(0, len(idx), batch):
            part = idx[j:j + batch]
            jobs.append((st, [prompts[i].caption for i in part], seed + idx[j], (xs, torch.tensor(part))))
    for s in range(n_seeds if div else 0):
        for j in range(0, len(div), batch):
            part = div[j:j + batch]
            jobs.append((None, [p.caption for p in part], seed + 100_003 * (s + 1) + j,
                         (dx, (slice(j, j + len(part)), s))))
    with progress_bar(sum(len(c) for _, c, _, _ in jobs), "sampling the generalisation prompts",
                      enabled=progress) as bar:
        for st, caps, sd, (dest, at) in jobs:
            if styles:
                den.set_style(st)
            if sample_fn is not None:
                x = sample_fn(den, caps, sd, st).float()
            else:
                x = sample(den, caps, seed=sd, stride=stride, guidance=guidance, sampler=sampler, steps=steps).float()
            dest[at] = x
            bar.advance(len(caps))
    if styles:
        den.set_style(None)
    keys = [p.key for p in prompts]
    labels = torch.tensor([cls[k] for k in keys], dtype=torch.long)
    r_s = rec.ranks(net, xs, labels)
    real = real_sets_of(ms)
    real_r = {s: rec.real_ranks(net, classes, rs, keys, size) for s, rs in real.items()}

    def real_hits(i: int, k: int) -> float:
        p = prompts[i]
        use = [p.style] if p.style is not None and real_r[p.style][i] >= 0 else \
            [s for s in real_r if real_r[s][i] >= 0]
        return float(np.mean([float(real_r[s][i] < k) for s in use])) if use else 0.0

    result = {"resolution": size, "sampler": sampler or DEFAULT_SAMPLER, "stride": None if steps else stride, "steps": steps,
              "guidance": guidance, "seed": seed, "styles": list(styles), "sets": list(real), "rows": {},
              "left_out_no_class": len(every) - len(prompts)}
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(row_name(p), []).append(i)
    for name, sel in groups.items():
        t = torch.tensor(sel)
        result["rows"][name] = _row(r_s[t], [real_hits(i, 1) for i in sel], [real_hits(i, 5) for i in sel])
    tone = [i for i, p in enumerate(prompts) if p.split == "tone-pair"]
    if tone:
        result["rows"]["tone-pair"].update(tone_accuracy(xs[torch.tensor(tone)], [prompts[i] for i in tone], ms, size))
    result["ceiling"] = rec.ceiling(net, real, classes, size)
    bank = images_to_tensor(ms.images[[i for i, s in enumerate(split) if not s]], size)
    if div:
        dk = [p.key for p in div]
        dl = torch.tensor([cls[k] for k in dk]).repeat_interleave(n_seeds)
        dr = rec.ranks(net, dx.flatten(0, 1), dl).view(len(div), n_seeds)
        cmp = min(32, size)
        d = rec.diversity(dx, dr < 5, dk, rec.real_spread(real, cmp), cmp)
        d.pop("per_prompt", None)
        d["captions"] = [p.caption for p in div]
        d["copies"] = rec.copy_rate(dx.flatten(0, 1), bank, size)
        result["diversity"] = d
        result["_diversity_images"] = dx
    result["samples"] = [{"caption": p.caption, "split": p.split, "style": p.style, "target": ms.captions[p.row],
                          "rank": int(r)} for p, r in zip(prompts, r_s.tolist())]
    result["_images"], result["_prompts"] = xs, prompts
    return result


def table(res: dict) -> str:
    """The result as the text table `dfedit-train recognise` prints."""
    lines = [f"{'prompts':<24} {'n':>4} {'top-5':>6} {'real':>6} {'ratio':>6} {'top-1':>6} {'rank':>6}  notes"]
    for name, r in res["rows"].items():
        note = ""
        if r.get("tone_accuracy") is not None:
            note = f"tone right {r['tone_accuracy']:.2f} (chance {r['chance']:.2f})"
        ratio = f"{r['ratio_top5']:.3f}" if r["ratio_top5"] is not None else "-"
        lines.append(f"{name:<24} {r['n']:>4} {r['top5']:>6.3f} {r['real_top5']:>6.3f} {ratio:>6} {r['top1']:>6.3f} "
                     f"{(r['median_rank'] or math.nan):>6.0f}  {note}")
    if "diversity" in res:
        d = res["diversity"]
        c = d["copies"]
        lines.append(f"diversity {d['diversity'] if d['diversity'] is not None else float('nan'):.3f} "
                     f"({d['n_prompts']} captions x {d['n_seeds']} seeds, recognised {d['recognised']:.2f}); "
                     f"copy rate {c['copy']:.3f} (Gu {c['gu']:.3f}, near {c['near']:.3f}) against every training image")
    ce = ", ".join(f"{s} {v['top5']:.3f}" for s, v in res["ceiling"].items() if v.get("top5") is not None)
    lines.append(f"judge's top-5 on the real drawings (ceiling): {ce}")
    return "\n".join(lines)
