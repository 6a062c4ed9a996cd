"""dfedit_train: train a small text-conditional pixel-space U-Net on emoji and hand it to dfedit.

Files, one job each (nanoGPT / EDM style). The model's inference half (network, text encoder and
caption cache, checkpoint format and reading, input preconditioning) is dfedit's, in dfedit/emoji/:
this package imports dfedit, never the reverse.
  config.py      presets and option aliases (the checkpoint's dataclasses: dfedit.emoji.config)
  data.py        emoji sources (npm tarball, Kaggle layout, folder + CSV) -> one cached uint8 array
  diffusion.py   objectives and the training loss, on dfedit.emoji's preconditioning
  checkpoint.py  writing: safetensors + JSON, atomic writes, rotation; the checkpoint a run resumes from
  rundir.py      the run directory: lock, epoch log, --restart's archive, temporaries of dead writers
  export.py      a run's EMA weights as a small inference-only model directory
  sample.py      validation grids through dfedit's one sampling loop
  step.py        one optimizer step: its batch, drawn on the device, and where each random draw comes from
  train.py       the training loop (accelerate): a session of steps, checkpoints, grids, stops
  evaluate.py    offline metrics: per-band held-out loss, nearest-neighbour memorisation check
  recognise.py   the recognisability metric
  cli.py         `dfedit-train emoji | eval | recognise | export | data`
"""

__version__ = "0.1.0"
