"""Build dfedit/emoji/names.json, the table behind dfedit/emoji/names.py, from the npm package
emojibase-data (MIT; its English labels are Unicode CLDR's short names, Unicode License v3):

    npm pack emojibase-data@16.0.3
    python -m dfedit.emoji.names_table emojibase-data-16.0.3.tgz

Keys are code points in hex without variation selectors (FE0F/FE0E), values CLDR names. Every
emoji without a skin-tone modifier is listed; a skin-tone variant is listed only when its name is
not what `names.tone_name` derives from the base emoji's (most are), which keeps the table small.
Version 16 matches Emoji 16.0, the version of the emoji-datasource package the trainer reads.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

OUT = Path(__file__).with_name("names.json")
SOURCE = ("emojibase-data@16.0.3 (MIT), en/data.json: Unicode CLDR short names (Unicode License v3); "
          "both notices in names.LICENSE.txt")


def build(tgz: Path) -> dict:
    from .names import TONES, key_of, tone_name
    with tarfile.open(tgz) as tar:
        data = json.load(io.TextIOWrapper(tar.extractfile("package/en/data.json"), encoding="utf-8"))
    bases, tones = {}, {}
    for e in data:
        bases[key_of(e["hexcode"])] = e["label"]
        for s in e.get("skins") or []:
            tones[key_of(s["hexcode"])] = s["label"]
    bases = {k: v for k, v in bases.items() if not any(c in TONES for c in k.split("-"))}
    # plain ASCII (digits, '#', '*') is text, never an emoji on its own
    bases = {k: v for k, v in bases.items() if any(int(c, 16) > 0x7F for c in k.split("-"))}
    extra = {k: v for k, v in tones.items() if tone_name(k, bases) != v}
    return {"source": SOURCE, "names": bases, "tone_exceptions": extra}


def main(argv: list[str]) -> None:
    table = build(Path(argv[0]))
    OUT.write_text(json.dumps(table, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n",
                   encoding="utf-8")
    print(f"wrote {OUT}: {len(table['names'])} names, {len(table['tone_exceptions'])} skin-tone exceptions")


if __name__ == "__main__":
    main(sys.argv[1:])
