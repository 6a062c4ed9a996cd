"""Draws docs/gallery/sketch.png: a wobbly hand-drawn-style smiley (the SDEdit gallery's input)."""

import math
import random

from PIL import Image, ImageDraw

random.seed(3)
img = Image.new("RGB", (256, 256), "white")
d = ImageDraw.Draw(img)


def wobbly(points, fill, width):
    pts = [(x + random.uniform(-3, 3), y + random.uniform(-3, 3)) for x, y in points]
    d.line(pts, fill=fill, width=width, joint="curve")


circle = [(128 + 100 * math.cos(a / 40 * 2 * math.pi), 128 + 100 * math.sin(a / 40 * 2 * math.pi)) for a in range(41)]
d.polygon(circle, fill=(250, 205, 60))
wobbly(circle, (120, 80, 20), 6)
for cx in (92, 164):
    d.ellipse((cx - 10, 82, cx + 10, 112), fill=(60, 40, 20))
smile = [(128 + 60 * math.cos(a), 140 + 45 * math.sin(a)) for a in [i * math.pi / 20 for i in range(2, 19)]]
wobbly(smile, (60, 40, 20), 8)
img.save("docs/gallery/sketch.png")
