"""A training process that kills itself with SIGKILL at a chosen point inside a checkpoint save.

    python fault_child.py OUT TARBALL ENCODER SAVE_NO WHERE

trains the tiny preset (the same configs as tests/train/test_checkpoint_faults.py's reference run) and, during
the SAVE_NO-th checkpoint save, SIGKILLs itself:
    WHERE=tensors  after model.safetensors is written into the temporary step directory
    WHERE=latest   after the step directory is renamed into place, before latest.json is written
Nothing is cleaned up: what the kill leaves is what the next start must cope with.
"""

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: emoji_synth
torch.set_num_threads(1)

from emoji_synth import tiny_configs  # noqa: E402

from dfedit_train import checkpoint as ckpt  # noqa: E402
from dfedit_train.train import train  # noqa: E402

CONFIG = dict(epochs=3, sample_every=0, keep_checkpoints=3, batch_size=4, grad_accum=2, flip_prob=0.5)


def main():
    out, tarball, encoder, save_no, where = sys.argv[1:6]
    save_no = int(save_no)
    saves = {"n": 0}
    real_save, real_write, real_json = ckpt.save, ckpt.write_file, ckpt._write_json

    def counting_save(*a, **k):
        saves["n"] += 1
        return real_save(*a, **k)

    def write_file(path, data, *a, **k):
        real_write(path, data, *a, **k)
        if where == "tensors" and saves["n"] == save_no and Path(path).name == "model.safetensors":
            os.kill(os.getpid(), signal.SIGKILL)

    def write_json(path, obj):
        if where == "latest" and saves["n"] == save_no and Path(path).name == "latest.json":
            os.kill(os.getpid(), signal.SIGKILL)
        real_json(path, obj)

    ckpt.save, ckpt.write_file, ckpt._write_json = counting_save, write_file, write_json
    mc, dc, tc, dac = tiny_configs(encoder, tarball, **CONFIG)
    train(Path(out), mc, dc, tc, dac, progress=False)


if __name__ == "__main__":
    main()
