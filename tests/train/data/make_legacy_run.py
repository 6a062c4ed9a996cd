"""How tests/train/data/legacy-run/ was made, with dfedit-train as it was before issue 11 (commit
46e8610): a tiny-preset run of 2 steps on the synthetic npm tarball of emoji_synth.py, with the
pinned MiniLM text encoder (offline). The run is kept in git, byte for byte as that code wrote it,
so that tests/train/test_legacy_run.py can prove a run written before the refactor still loads in
`dfedit` and resumes in `dfedit-train` after it. Do not regenerate it with newer code: its whole
point is to be old.

    cd tests/train/data && PYTHONPATH=../../.. python make_legacy_run.py

The data source is recorded as the relative path `emoji.tgz` (resuming needs the same --data), so
the test recreates the tarball (deterministic content) next to a copy of the run and resumes there.
"""

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/: emoji_synth

from emoji_synth import npm_entries, npm_files, write_tarball  # noqa: E402



def configs():
    """The tiny preset made smaller still (one 8-wide level), so the run is a few hundred KB."""
    from dataclasses import replace

    from dfedit_train.config import DataConfig, preset

    mc, dc, tc = preset("tiny")
    mc = replace(mc, channels=(8,), self_attn=(False,), cross_attn=(True,), head_dim=8, time_dim=16)
    tc = replace(tc, epochs=1, sample_every=0, save_every=1, seed=11)
    dac = DataConfig(source="emoji.tgz", text_encoder="minilm", max_length=8, val_fraction=0.15)
    return mc, dc, tc, dac


if __name__ == "__main__":
    import os

    os.chdir(HERE)
    shutil.rmtree("legacy-run", ignore_errors=True)
    write_tarball(Path("emoji.tgz"), npm_files(), npm_entries())
    from dfedit_train.train import train

    try:
        train(Path("legacy-run"), *configs(), progress=False, max_steps=2)
    finally:
        Path("emoji.tgz").unlink()
        (HERE / "legacy-run" / "loss.png").unlink(missing_ok=True)
