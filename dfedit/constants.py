"""Defaults the command line needs before anything heavy is imported (`dfedit --help` must not
import torch): the default IF checkpoints, sampler, stride and stage II settings, and the built-in
models. Every signature and help text reads them from here."""

from pathlib import Path

DEFAULT_STAGE1 = "DeepFloyd/IF-I-XL-v1.0"
DEFAULT_STAGE2 = "DeepFloyd/IF-II-L-v1.0"

DEFAULT_SAMPLER = "ddpm"  # the course's sampler and IF's own


def _modules(folder: str) -> list[str]:
    """The module names in a registry folder, read from the file names (nothing imported, so the
    help text can list them without torch); files starting with _ are not entries."""
    import pkgutil
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).resolve().parent / folder)])
                  if not m.name.startswith("_"))


# One file per sampler in dfedit/samplers/ (dpmpp_2m.py is dpmpp-2m), the default first.
SAMPLER_NAMES = tuple(sorted((n.replace("_", "-") for n in _modules("samplers")), key=lambda n: n != DEFAULT_SAMPLER))
DEFAULT_STRIDE = 30  # t = 990, 960, ..., 0: 34 model calls
STAGE2_STEPS = 50  # IF stage II's model calls (diffusers' leading spacing), guidance and the noise
STAGE2_CFG = 4.0   # added to the upsampled low-res image: IF's own defaults
NOISE_LEVEL = 250

# Models that ship inside the package, by the name --model takes (`./emoji` names a local directory
# of that name instead).
BUILTIN_MODELS = {"emoji": Path(__file__).resolve().parent / "weights" / "emoji"}

# One file per anagram view in dfedit/views/ ("identity", the unchanged image, lives in its __init__).
VIEW_NAMES = tuple(_modules("views"))

# One file per hybrid split (factorization) in dfedit/splits/.
SPLIT_NAMES = tuple(sorted(_modules("splits"), key=lambda n: n != "gaussian"))
