"""The inference half of the emoji model that dfedit-train trains and dfedit ships (`--model emoji`).

    config.py        the checkpoint format: the config.json sections as dataclasses, and the noise
                     schedule a `diffusion` section implies
    schema.py        the one check every config.json goes through before any weights load
    checkpoint.py    reading a run directory or checkpoint: which step, is it complete, load it
    unet.py          the text-conditional U-Net
    precondition.py  the network's input standardisation (per-channel data statistics)
    text.py          the frozen text encoder (MiniLM by default) and its caption-embedding cache
    denoiser.py      EmojiDenoiser: a checkpoint as a dfedit `Denoiser`

dfedit_train (the trainer) imports these; nothing here imports dfedit_train.
"""
