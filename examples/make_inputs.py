"""Writes the inputs the example scripts edit (examples/inputs/), so they run with no arguments:

  face.png    a "photo": the built-in model's own grinning face (32 px, seed 1), what sdedit.sh and
              inpaint.sh edit; made by dfedit, so it is exactly the kind of image the model draws
  sketch.png  a wobbly hand-drawn smiley (256 px, drawn here, as docs/sketch.py draws the gallery's)
  mask.png    white = regenerate: the lower half of a 32 px square (the face's mouth)

usage: python examples/make_inputs.py      (from anywhere; same output every time)
"""

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent / "inputs"


def sketch(path: Path) -> None:
    rnd = random.Random(3)
    img = Image.new("RGB", (256, 256), "white")
    d = ImageDraw.Draw(img)

    def wobbly(points, fill, width):
        d.line([(x + rnd.uniform(-3, 3), y + rnd.uniform(-3, 3)) for x, y in points], fill=fill, width=width,
               joint="curve")

    circle = [(128 + 100 * math.cos(a / 40 * 2 * math.pi), 128 + 100 * math.sin(a / 40 * 2 * math.pi))
              for a in range(41)]
    d.polygon(circle, fill=(250, 205, 60))
    wobbly(circle, (120, 80, 20), 6)
    for cx in (92, 164):
        d.ellipse((cx - 10, 82, cx + 10, 112), fill=(60, 40, 20))
    smile = [(128 + 60 * math.cos(a), 140 + 45 * math.sin(a)) for a in [i * math.pi / 20 for i in range(2, 19)]]
    wobbly(smile, (60, 40, 20), 8)
    img.save(path)


def mask(path: Path) -> None:
    m = Image.new("L", (32, 32), 0)
    m.paste(255, (0, 16, 32, 32))
    m.save(path)


def face(path: Path) -> None:
    import torch

    from dfedit import DFEdit
    torch.set_num_threads(1)
    DFEdit(model="emoji", quiet=True).sample("grinning face", seed=1).save(path)


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    sketch(HERE / "sketch.png")
    mask(HERE / "mask.png")
    face(HERE / "face.png")
    print(f"wrote {HERE}/face.png, sketch.png, mask.png")
