"""Names the command line needs before anything heavy is imported (`dfedit --help` must not import
torch): the default IF checkpoints and the registered samplers (dfedit.sampler.SAMPLERS, which a
test keeps equal to SAMPLER_NAMES)."""

DEFAULT_STAGE1 = "DeepFloyd/IF-I-XL-v1.0"
DEFAULT_STAGE2 = "DeepFloyd/IF-II-L-v1.0"
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp-2m", "euler", "heun")
