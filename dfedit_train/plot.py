"""OUT/loss.png: the training loss curve, drawn with matplotlib from OUT/log.jsonl.

Rewritten after every logged epoch, so it is always current while a run trains. The x axis is the
optimizer step (a resumed run appends to the same log, and a stopped, resumed epoch logs twice);
the loss axis is logarithmic, as diffusion losses fall by orders of magnitude early on; the
learning rate is drawn on a second axis. Uses matplotlib's object API with the Agg canvas, so no
display and no global pyplot state are touched.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from dfedit.outputs import save_png

from .rundir import read_log


def loss_curve(run: Path) -> Path | None:
    """Draw RUN/log.jsonl into RUN/loss.png (None when the log has no epoch yet)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    log = run / "log.jsonl"
    rows = [r for r in read_log(run) if "step" in r and "loss" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(steps, loss, color="tab:blue", marker="o" if len(rows) <= 40 else None, markersize=3,
            label="mean training loss per epoch")
    if all(v > 0 for v in loss):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (epoch mean)", color="tab:blue")
    ax.grid(True, which="both", alpha=0.3)
    if all("lr" in r for r in rows):
        ax2 = ax.twinx()
        ax2.plot(steps, [r["lr"] for r in rows], color="tab:gray", linestyle="--", linewidth=1)
        ax2.set_ylabel("learning rate (at epoch end)", color="tab:gray")
    ax.set_title(f"{run.name}: {len(rows)} epochs logged, step {steps[-1]}, loss {loss[-1]:.4g}", fontsize=10)
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    buf.seek(0)
    with Image.open(buf) as im:
        img = im.convert("RGB")
    meta = {"command": "dfedit-train loss curve", "source": str(log), "epochs_logged": len(rows),
            "last_step": steps[-1], "last_loss": loss[-1], "plotted_with": f"matplotlib {matplotlib.__version__}"}
    return save_png(img, run / "loss.png", meta)
