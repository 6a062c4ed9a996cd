"""Write the caption list of an exported emoji model (what `dfedit prompts` lists) from the data it
was trained on: the training captions and the held-out ones, in the data's order.

    python -m dfedit_train.captions dfedit/weights/emoji        # the built-in model (npm data)

The data source, vendor, base-only flag and split fraction come from the model's config.json, so
the list is the trainer's own split (`data.split`); the counts are checked against the config.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dfedit.files import atomic_write
from dfedit.errors import DfeditError

from . import data as datamod

NAME = "captions.json"


def build(model_dir: Path, source: str = "npm") -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())["data"]
    d = datamod.load(source, cfg["vendor"], base_only=cfg["base_only"], val_fraction=cfg["val_fraction"])
    train = [c for c, v in zip(d.captions, d.val) if not v]
    held = [c for c, v in zip(d.captions, d.val) if v]
    if (len(train), len(held)) != (cfg["n_train"], cfg["n_val"]):
        raise DfeditError(f"{source} gives {len(train)} training and {len(held)} held-out captions, the model's "
                          f"config says {cfg['n_train']} and {cfg['n_val']}: not the data it was trained on")
    return {"source": cfg["source_desc"], "train": train, "held_out": held}


def main(argv: list[str]) -> None:
    model_dir = Path(argv[0])
    out = build(model_dir, *(argv[1:2] or []))
    atomic_write(model_dir / NAME, (json.dumps(out, ensure_ascii=False, indent=0) + "\n").encode())
    print(f"wrote {model_dir / NAME}: {len(out['train'])} training and {len(out['held_out'])} held-out captions")


if __name__ == "__main__":
    main(sys.argv[1:])
