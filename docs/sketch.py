"""Draws docs/gallery/sketch.png, the SDEdit gallery's input: the same wobbly hand-drawn smiley the
examples edit (examples/make_inputs.py draws it; one drawing, two places it is used).

usage: python docs/sketch.py      (from the repository root)
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from make_inputs import sketch  # noqa: E402

sketch(ROOT / "docs" / "gallery" / "sketch.png")
