"""Devices, dtypes and CPU threads: what --device, --dtype and --threads name, and giving a freed
model's memory back."""

from __future__ import annotations

import gc
import os

import torch

from .errors import ParamError

_TORCH_THREADS = torch.get_num_threads()  # torch's own choice (its physical cores), before anyone sets it


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's share), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """dfedit's CPU threads when --threads is not given: OMP_NUM_THREADS when set, else 1 on a
    machine with 2 CPUs or fewer and min(torch's choice, 4) on a larger one. Measured on a shared
    2-core Xeon (docs/benchmarks.md#cpu-threads): an emoji sample took 1.5 s on one thread and
    50-67 s on two while other jobs ran (two threads were never more than 20% faster when it was idle)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return 1 if cpu_count() <= 2 else max(1, min(_TORCH_THREADS, 4))


def set_threads(threads: int | None = None) -> int:
    """torch's intra-op threads for this process: `threads`, or `default_threads()`; returns it."""
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ParamError("threads", f"must be at least 1, got {threads}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps") or (dev.index is not None and dev.type != "cuda"):
        raise ParamError("device", f"{device!r} is unknown: use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParamError("device", f"{device} was asked for but this torch build sees no CUDA GPU: "
                             "use {device} cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ParamError("device", f"{device}: this machine has {n} CUDA GPU{'s' if n != 1 else ''} "
                              f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                  and torch.backends.mps.is_available()):
        raise ParamError("device", "mps needs an Apple-silicon Mac with Metal; this machine has none: "
                         "use {device} cpu" + (" or cuda" if torch.cuda.is_available() else ""))
    return dev


_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # Half precision where it is fast and IF was published for it; CPUs lack fast fp16 kernels.
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ParamError("dtype", f"{dtype!r} is unknown: use auto, float16, bfloat16 or float32")
    return _DTYPES[dtype]


def free_memory() -> None:
    """Return a freed model's GPU memory before the next model loads. Only on CUDA: there a
    reference cycle could keep gigabytes alive, while on the CPU refcounting already freed the
    weights and gc.collect() costs ~0.3 s per call with torch + diffusers imported (measured:
    it was the whole gap in the end-to-end benchmark against IFPipeline)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()
