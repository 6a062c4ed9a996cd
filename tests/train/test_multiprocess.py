"""Training on two CPU processes (gloo), launched as a user would: `accelerate launch --cpu
--num_processes 2 -m dfedit_train.cli emoji ...` (accelerate alone starts one process there;
dfedit-train turns it into two ranks), and a probe under torchrun that looks inside the loop."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dfedit_train.cli import app
from dfedit_train.step import mix

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).parent / "accelerate"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(k, None)
    return env


def _run(cmd, timeout=600):
    """Run a launcher in its own session, so a timeout ends its worker processes too."""
    p = subprocess.Popen([str(c) for c in cmd], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _n_train(tarball) -> int:
    from dfedit_train import data
    d = data.load(str(tarball), "google", False, 0.15)
    return int((~d.val).sum())


@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate launcher is not installed beside python")
def test_two_cpu_processes_take_half_the_steps_per_epoch_and_resume(tmp_path, npm_tarball, tiny_encoder):
    n = _n_train(npm_tarball)
    batch = next(b for b in (4, 3, 5, 2, 6, 7) if n % (2 * b) == 0) if any(n % (2 * b) == 0 for b in range(2, 8)) else 4
    common = ["emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder, "--max-length", "12",
              "--quiet", "--sample-every", "0", "--batch-size", batch]
    one = tmp_path / "one"
    r = CliRunner().invoke(app, [str(a) for a in common + ["--out", one, "--epochs", "1"]])
    assert r.exit_code == 0, r.output
    single = json.loads((one / "latest.json").read_text())["step"]
    assert single == n // batch

    two = tmp_path / "two"
    launch = [ACCELERATE, "launch", "--cpu", "--num_processes", "2", "-m", "dfedit_train.cli", *common, "--out", two]
    r = _run(launch + ["--epochs", "1"])
    state = json.loads((two / "checkpoints" / f"step-{n // (2 * batch):08d}" / "config.json").read_text())["state"]
    assert state["world_size"] == 2 and state["steps_per_epoch"] == n // (2 * batch)
    if n % (2 * batch) == 0:
        assert 2 * state["steps_per_epoch"] == single  # both ranks' batches in every step: half the steps
    assert state["images_seen"] == state["step"] * 2 * batch
    assert (r.stdout + r.stderr).count("2 processes") == 1  # the summary comes from rank 0 only
    # Written once: one log line per epoch (not one per rank), no leftover temporary checkpoint.
    assert len((two / "log.jsonl").read_text().splitlines()) == 1
    assert not list((two / "checkpoints").glob(".tmp*")) and (two / "loss.png").is_file()

    r = _run(launch + ["--epochs", "2"])
    assert r.stderr.count("resuming") == 1 and "1 of 2 epochs done" in r.stderr
    latest = json.loads((two / "latest.json").read_text())
    assert latest["step"] == 2 * state["steps_per_epoch"]
    assert len((two / "log.jsonl").read_text().splitlines()) == 2
    cfg = json.loads((two / latest["checkpoint"] / "config.json").read_text())
    assert cfg["state"]["epoch"] == 2 and cfg["state"]["world_size"] == 2


def test_each_step_draws_both_ranks_batches_and_only_rank0_writes(tmp_path, npm_tarball, tiny_encoder):
    n, batch = _n_train(npm_tarball), 4
    out = tmp_path / "probe"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          Path(__file__).parent / "ddp_probe.py", out, npm_tarball, tiny_encoder, batch])
    ranks = [json.loads((out / f"probe-rank{r}.json").read_text()) for r in (0, 1)]
    spe = n // (2 * batch)
    assert all(p["world_size"] == 2 and p["steps_per_epoch"] == spe and p["steps"] == spe for p in ranks)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix(0, 1, 0))).tolist()
    for s in range(spe):
        a, b = ranks[0]["drawn"][s], ranks[1]["drawn"][s]
        assert len(a) == len(b) == batch and not set(a) & set(b)  # two different batches ...
        assert sorted(a + b) == sorted(perm[s * 2 * batch:(s + 1) * 2 * batch])  # ... that make up step s
    assert ranks[0]["saves"] == [spe] and ranks[1]["saves"] == []  # checkpoint + EMA written by rank 0 only
