"""dfedit_train: train a small text-conditional pixel-space U-Net on emoji and hand it to dfedit.

Files, one job each (nanoGPT / EDM style):
  config.py      presets and the dataclasses that go into every checkpoint's JSON
  data.py        emoji sources (npm tarball, Kaggle layout, folder + CSV) -> one cached uint8 array
  text.py        frozen HF text encoder + on-disk caption-embedding cache + the dfedit PromptEncoder
  unet.py        the network
  diffusion.py   schedule config, input preconditioning, training loss
  checkpoint.py  safetensors + JSON, atomic writes, rotation, `load_denoiser` for dfedit
  sample.py      validation grids through dfedit's one sampling loop
  train.py       the training loop (accelerate)
  evaluate.py    offline metrics: per-band held-out loss, nearest-neighbour memorisation check
  cli.py         `dfedit-train emoji | eval | data`
"""

__version__ = "0.1.0"
