"""docs/benchmarks.md: each benchmark owns a marked section; rewriting one keeps all the others."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def update_section(name: str, body: str, doc: Path = DOC) -> None:
    """Replace the text between `<!-- name:begin -->` and `<!-- name:end -->` (appended if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n## {name}\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, doc)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)docs/benchmarks.md"],  # the file this run rewrites
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" + local changes" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stamp(argv: list[str]) -> str:
    """When, with which command and at which commit a section was measured."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join(["python", "benchmarks/run.py", *argv]).strip()
    return f"_Measured {now} with `{cmd}` at dfedit commit {_git_commit()}._"


def environment(device: str) -> str:
    """Machine and versions: the facts a reader needs to trust or redo a table."""
    import torch

    versions = []
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "numpy"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        machine = f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, host CPU {_cpu_model()}"
    else:
        machine = f"{_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s) used"
    return "\n".join([f"- machine: {machine}", f"- versions: Python {sys.version.split()[0]}, {', '.join(versions)}"])
