"""Measures what edits without --prompt give on the built-in emoji model (issue 23): its
unconditional branch (the empty prompt) beside a caption, for sample, SDEdit of the model's own
grinning face and of the hand-drawn sketch (i_start 10, 20, 27, 30: t = 690, 390, 180, 90) and
inpainting (the lower half, and an all-white mask), four seeds each. Writes
docs/gallery/no-prompt-{sample,sdedit-face,sdedit-sketch,inpaint}.png (about 4 minutes on a busy
2-core CPU). usage: python docs/no_prompt.py   (from the repository root)"""

import torch
from PIL import Image

from dfedit import DFEdit
from dfedit.outputs import grid

torch.set_num_threads(1)
df = DFEdit(model="emoji", quiet=True)
face, sketch, mask = "examples/inputs/face.png", "examples/inputs/sketch.png", "examples/inputs/mask.png"
white = Image.new("L", (32, 32), 255)
N = 4


def save(name, results, labels):
    grid([r.pil() for r in results], [[lab] * N for lab in labels]).save(f"docs/gallery/no-prompt-{name}.png")


save("sample", [df.sample("", seed=0, num_samples=N), df.sample("grinning face", seed=0, num_samples=N)],
     ['""', "grinning face"])
for src, name, p in ((face, "face", "grinning face"), (sketch, "sketch", "grinning face")):
    res, labs = [], []
    for i in (10, 20, 27, 30):
        res.append(df.sdedit(src, "", i_start=i, seed=0, num_samples=N))
        labs.append(f'"" i={i}')
        res.append(df.sdedit(src, p, i_start=i, seed=0, num_samples=N))
        labs.append(f"{p} i={i}")
    save(f"sdedit-{name}", res, labs)
save("inpaint", [df.inpaint(face, mask, "", seed=0, num_samples=N),
                 df.inpaint(face, mask, "face with tongue", seed=0, num_samples=N),
                 df.inpaint(face, white, "", seed=0, num_samples=N),
                 df.inpaint(face, white, "grinning face", seed=0, num_samples=N)],
     ['"" lower half', "face with tongue, lower half", '"" all white', "grinning face, all white"])
