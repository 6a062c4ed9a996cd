"""dfedit: image editing with pixel-space diffusion models (DeepFloyd IF, or your own emoji model)."""

__version__ = "0.1.0"

# Loaded on first use (PEP 562), so `dfedit --help` and the CLI's argument checks never import torch.
_EXPORTS = {
    "Cond": "denoiser", "Denoiser": "denoiser", "PromptEncoder": "denoiser", "FlowDenoiser": "denoiser",
    "DfeditError": "errors", "ParamError": "errors", "ModelInfo": "backends",
    "DFEdit": "pipeline", "Result": "pipeline", "Plan": "plan", "make_generator": "plan", "Edit": "edits",
    "cfg": "sampler", "conditioned": "sampler", "denoise_loop": "sampler", "SAMPLERS": "sampler",
    "NoiseSchedule": "schedule",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dfedit' has no attribute {name!r}")
