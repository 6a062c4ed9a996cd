"""dfedit: image editing with pixel-space diffusion models (DeepFloyd IF, or your own emoji model)."""

__version__ = "0.1.0"

from .denoiser import Cond, Denoiser, PromptEncoder  # noqa: E402
from .errors import DfeditError  # noqa: E402
from .pipeline import DFEdit, Result, make_generator  # noqa: E402
from .sampler import cfg, conditioned, denoise_loop  # noqa: E402
from .schedule import NoiseSchedule  # noqa: E402

__all__ = ["Cond", "Denoiser", "PromptEncoder", "DfeditError", "DFEdit", "Result", "make_generator", "cfg",
           "conditioned", "denoise_loop", "NoiseSchedule", "__version__"]
