"""Run under `torchrun --nproc_per_node 2`: one epoch of tiny training, recording per rank which
training images each optimizer step drew and whether this rank wrote checkpoints or the log.

Not a test by itself (tests/train/test_multiprocess.py runs it): a separate process is the only
way to have two ranks, and the probes must sit inside the training loop.
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: emoji_synth
torch.set_num_threads(1)

from emoji_synth import tiny_configs  # noqa: E402

from dfedit_train import checkpoint as ckpt  # noqa: E402
from dfedit_train import step as stepmod  # noqa: E402
from dfedit_train import train as trainmod  # noqa: E402


def main(out: str, tarball: str, encoder: str, batch: int) -> None:
    rank = int(os.environ["RANK"])
    drawn, saves = [], []
    real_draw, real_save = stepmod.draw_batch, ckpt.save

    def draw(D, idx, *a, **k):
        drawn.append(idx.tolist())
        return real_draw(D, idx, *a, **k)

    def save(*a, **k):
        saves.append(a[1])  # the step saved
        return real_save(*a, **k)

    stepmod.draw_batch, ckpt.save = draw, save
    mc, dc, tc, dac = tiny_configs(encoder, tarball, epochs=1, batch_size=batch, sample_every=0)
    res = trainmod.train(Path(out), mc, dc, tc, dac, progress=False)
    Path(out, f"probe-rank{rank}.json").write_text(json.dumps(
        {"drawn": drawn, "saves": saves, "world_size": res["world_size"], "steps": res["step"],
         "steps_per_epoch": res["steps_per_epoch"]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
