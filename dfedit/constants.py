"""Names the command line needs before anything heavy is imported (`dfedit --help` must not import
torch): the default IF checkpoints, the registered samplers (dfedit.sampler.SAMPLERS, which a
test keeps equal to SAMPLER_NAMES) and the built-in models."""

from pathlib import Path

DEFAULT_STAGE1 = "DeepFloyd/IF-I-XL-v1.0"
DEFAULT_STAGE2 = "DeepFloyd/IF-II-L-v1.0"
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp-2m", "euler", "heun")

# Models that ship inside the package, by the name --model takes (`./emoji` names a local directory
# of that name instead).
BUILTIN_MODELS = {"emoji": Path(__file__).resolve().parent / "weights" / "emoji"}
