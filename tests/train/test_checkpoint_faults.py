"""Fault tests for runs and checkpoints: each plants one fault and checks what the next start does.

Kills inside a save, every state latest.json can be in, two trainers on one run directory, NaN
weights, damaged and hand-edited configs, another model's tensors, a full disk during save and
export, SIGTERM / SIGINT during training and during start-up, bad options. The reference for every
"bit-exact" claim is an uninterrupted run with the same configs (docs/reliability.md).
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from dfedit.errors import DfeditError
from dfedit.emoji import checkpoint as eck
from dfedit_train import checkpoint as ckpt
from dfedit_train.rundir import RunLock
from dfedit_train.cli import app
from dfedit_train.config import resolve_configs
from dfedit_train.train import train

HERE = Path(__file__).parent
REPO = HERE.parent.parent
runner = CliRunner()
sys.path.insert(0, str(HERE))
from fault_child import CONFIG  # noqa: E402
from helpers import DiskFull, last_line_error  # noqa: E402


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def configs(tiny, **kw):
    return tiny(**{**CONFIG, **kw})


def resume(out, cfgs, log=None, given=None, **kw):
    """What `dfedit-train emoji` does on an existing --out: pick the checkpoint, train on."""
    msgs = [] if log is None else log
    mc, dc, tc, dac, saved = resolve_configs(out, cfgs[:3], given or {}, log=msgs.append)
    r = train(out, mc, dc, tc, dac, saved=saved, progress=False, log=msgs.append, **kw)
    return r, saved, msgs


def tensors(ck, which):
    return load_file(str(Path(ck) / f"{which}.safetensors"))


def assert_same_weights(a_dir, b_dir):
    for which in ("model", "ema", "optimizer"):
        a, b = tensors(a_dir, which), tensors(b_dir, which)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{which}.{k} differs"


def latest(out):
    return out / json.loads((out / "latest.json").read_text())["checkpoint"]


def steps(out):
    return [s for s, _ in eck.step_dirs(out / "checkpoints")]


def litter(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith(".") and
                  p.name != ".lock" and (".tmp" in p.name or p.name.startswith(".old")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, npm_tarball, tiny_encoder):
    """The uninterrupted run every resumed run must equal bit for bit (3 epochs, 2 steps each)."""
    from emoji_synth import tiny_configs

    out = tmp_path_factory.mktemp("ref") / "run"
    mc, dc, tc, dac = tiny_configs(tiny_encoder, npm_tarball, **CONFIG)
    train(out, mc, dc, tc, dac, progress=False)
    return out


# ---- today's checkpoint format ---------------------------------------------------------------------

def legacy_save(out, step, config, model, ema, optimizer):
    """How main's dfedit-train wrote a checkpoint before issue 14 (copied, frozen): save_file for
    the tensors, json.dump(indent=1) for config.json and latest.json, no lock, no checksums."""
    final = out / "checkpoints" / f"step-{step:08d}"
    final.mkdir(parents=True)
    opt_tensors, opt_meta = ckpt.optimizer_to_flat(optimizer)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.items()}, str(final / "model.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(final / "ema.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in opt_tensors.items()}, str(final / "optimizer.safetensors"))
    with open(final / "config.json", "w") as f:
        json.dump({**config, "format": "dfedit-train/emoji-unet", "format_version": 1, "optimizer": opt_meta}, f,
                  indent=1)
    with open(out / "latest.json", "w") as f:
        json.dump({"checkpoint": f"checkpoints/{final.name}", "step": step}, f, indent=1)


def test_todays_format_is_written_unchanged_and_resumes_bit_exact(tmp_path, tiny, reference):
    """The lead's long run was started with main's code: its checkpoints must load and resume
    bit-exactly, and what the new code writes must be byte-for-byte what main's code wrote."""
    cfgs = configs(tiny)
    new = tmp_path / "new"
    train(new, *cfgs, progress=False, max_steps=3)  # mid-epoch 2
    ck = latest(new)
    cfg = json.loads((ck / "config.json").read_text())
    opt = ckpt.optimizer_from_flat(tensors(ck, "optimizer"), cfg["optimizer"])
    body = {k: v for k, v in cfg.items() if k not in ("format", "format_version", "optimizer")}
    old = tmp_path / "old"
    legacy_save(old, 3, body, tensors(ck, "model"), tensors(ck, "ema"), opt)
    for f in ("config.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert (ck / f).read_bytes() == (old / "checkpoints" / "step-00000003" / f).read_bytes(), f
    assert (new / "latest.json").read_bytes() == (old / "latest.json").read_bytes()
    # The old-format run directory (plus a log line of its own) resumes to the uninterrupted run.
    (old / "log.jsonl").write_text(json.dumps({"epoch": 1, "step": 2, "loss": 1.0, "epoch_s": 1.0,
                                               "images_per_s": 1.0}) + "\n")
    r, saved, msgs = resume(old, cfgs)
    assert saved["state"]["step"] == 3 and not [m for m in msgs if m.startswith("note")], msgs
    assert r["step"] == 6 and latest(old).name == "step-00000006"
    assert_same_weights(latest(reference), latest(old))
    # the shipped model's config (written by main's export) passes the schema check unchanged
    from dfedit.emoji.schema import check_config
    check_config(json.loads((eck.BUILTIN["emoji"] / "config.json").read_text()), "shipped", "model")


# ---- kills -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["tensors", "latest"])
def test_sigkill_inside_a_save_then_resume(tmp_path, tiny, reference, npm_tarball, tiny_encoder, where):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, str(HERE / "fault_child.py"), str(out), str(npm_tarball), str(tiny_encoder),
                        "2", where], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    if where == "tensors":  # killed inside the second save: its temporary directory is left behind
        assert steps(out) == [2] and any(".step-00000004.dfedit-" in x for x in litter(out))
    else:  # killed after the rename, before latest.json: step 4 is complete, latest.json still says 2
        assert steps(out) == [2, 4] and latest(out).name == "step-00000002"
    log_lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log_lines] == [1, 2]  # epoch 2 was logged before its save died
    r, saved, msgs = resume(out, configs(tiny))
    assert litter(out) == []  # the next start removed what the killed save left
    if where == "tensors":
        assert saved["state"]["step"] == 2
        assert any("removed 1 temporary" in m for m in msgs), msgs
        assert any("log.jsonl: dropped 1 line(s): 1 past step 2" in m for m in msgs), msgs
    else:
        assert saved["state"]["step"] == 4
        assert any("latest.json names step-00000002, but step-00000004 is newer and complete" in m for m in msgs)
    assert r["step"] == 6
    assert_same_weights(latest(reference), latest(out))
    # log.jsonl agrees with the checkpoint resumed from: every epoch exactly once
    assert [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


# ---- latest.json in every state --------------------------------------------------------------------

@pytest.fixture
def two_checkpoints(tmp_path, tiny):
    out = tmp_path / "run"
    train(out, *configs(tiny, epochs=2), progress=False)
    assert steps(out) == [2, 4]
    return out


@pytest.mark.parametrize("state", ["deleted", "empty", "truncated", "garbage", "not-an-object", "dangling",
                                   "wrong-step", "behind"])
def test_latest_json_damaged_resumes_from_the_newest_good_step(two_checkpoints, tiny, state):
    out = two_checkpoints
    lj = out / "latest.json"
    good = lj.read_bytes()
    if state == "deleted":
        lj.unlink()
    elif state == "empty":
        lj.write_bytes(b"")
    elif state == "truncated":
        lj.write_bytes(good[: len(good) // 2])
    elif state == "garbage":
        lj.write_bytes(os.urandom(64) + b"\xff\xfe")
    elif state == "not-an-object":
        lj.write_text("[1, 2]")
    elif state == "dangling":
        lj.write_text(json.dumps({"checkpoint": "checkpoints/step-00000042", "step": 42}))
    elif state == "wrong-step":
        lj.write_text(json.dumps({"checkpoint": "checkpoints/step-00000004", "step": "four"}))
    else:
        lj.write_text(json.dumps({"checkpoint": "checkpoints/step-00000002", "step": 2}))
    mc, dc, tc, dac, saved = resolve_configs(out, configs(tiny, epochs=2)[:3], {"train.epochs": 3},
                                             log=(msgs := []).append)
    assert saved["state"]["step"] == 4, msgs
    assert len(msgs) == 1 and msgs[0].startswith("note: ") and "step-00000004" in msgs[0], msgs
    assert json.loads(lj.read_text()) == {"checkpoint": "checkpoints/step-00000004", "step": 4}  # repaired
    assert eck.resolve(out).name == "step-00000004"


def test_dfedit_reads_a_run_whose_latest_json_is_garbage(two_checkpoints, capsys):
    (two_checkpoints / "latest.json").write_bytes(b"\x00\x9f garbage")
    assert eck.is_checkpoint_dir(two_checkpoints)
    ck, cfg = eck.load(two_checkpoints)
    assert ck.name == "step-00000004" and cfg["state"]["step"] == 4
    assert "using the newest complete checkpoint" in capsys.readouterr().err


def test_cli_says_which_checkpoint_and_why(two_checkpoints, npm_tarball, tiny_encoder):
    (two_checkpoints / "latest.json").unlink()
    r = invoke("emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder, "--max-length", "12",
               "--out", two_checkpoints, "--quiet", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert "note: latest.json is missing; resuming from the newest complete checkpoint, step-00000004" in r.stderr
    assert "resuming" in r.stderr and "already finished" in r.stderr


def test_checkpoints_but_none_resumable_never_restarts_silently(two_checkpoints, tiny, npm_tarball, tiny_encoder):
    for _, ck in eck.step_dirs(two_checkpoints / "checkpoints"):
        (ck / "ema.safetensors").write_bytes(b"short")
    common = ["emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder, "--max-length", "12",
              "--out", two_checkpoints, "--quiet", "--epochs", "1"]
    last_line_error(invoke(*common), "none can be resumed")
    assert steps(two_checkpoints) == [2, 4]  # nothing deleted, nothing started
    r = invoke(*common, "--restart")
    assert r.exit_code == 0, r.output
    assert "--restart: the previous run" in r.stderr
    prev = [p for p in two_checkpoints.iterdir() if p.name.startswith("previous-")]
    assert len(prev) == 1 and (prev[0] / "checkpoints" / "step-00000004").is_dir()
    assert steps(two_checkpoints) == [2]


# ---- two trainers ----------------------------------------------------------------------------------

HOLD_LOCK = ("import sys, time; from pathlib import Path; from dfedit_train.rundir import RunLock; "
             "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)")


def test_second_trainer_refuses_and_a_dead_owners_lock_is_taken_over(tmp_path, npm_tarball, tiny_encoder):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        common = ["emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder,
                  "--max-length", "12", "--out", out, "--quiet", "--epochs", "1", "--sample-every", "0"]
        err = last_line_error(invoke(*common, "--seed", "5"), "is in use by another dfedit-train")
        assert f"pid {holder.pid} on " in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the second one wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the owner died without releasing: the lock is stale and the next trainer takes it over
    r = invoke(*common)
    assert r.exit_code == 0, r.output
    assert f"took over the lock of a dfedit-train that is no longer running (pid {holder.pid}" in r.stderr
    assert not (out / ".lock").exists()  # released at the end


def test_lock_refuses_while_held_in_process(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        # the same file locked through another descriptor: flock says busy
        with pytest.raises(DfeditError, match="in use by another dfedit-train"):
            RunLock(out).acquire()
    assert not out.exists()  # created by the lock, nothing else written: removed again


# ---- NaN ---------------------------------------------------------------------------------------------

def test_nan_weights_are_skipped_and_healthy_checkpoints_survive(two_checkpoints, tiny, reference):
    out = two_checkpoints
    newest = out / "checkpoints" / "step-00000004"
    for which in ("model", "ema"):
        t = tensors(newest, which)
        save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in t.items()},
                  str(newest / f"{which}.safetensors"))
    (newest / eck.MANIFEST).unlink()  # as a checkpoint written before manifests: the NaN check finds it
    r, saved, msgs = resume(out, configs(tiny), given={"train.epochs": 3})
    assert saved["state"]["step"] == 2
    assert any("skipping step-00000004: model.safetensors holds NaN or infinite values" in m for m in msgs), msgs
    assert (out / "checkpoints" / "damaged-step-00000004").is_dir()  # kept aside, never resumed again
    assert r["step"] == 6 and steps(out) == [2, 4, 6]
    assert_same_weights(latest(reference), latest(out))  # resumed from step 2: the same run


def test_a_diverging_run_stops_and_keeps_its_checkpoints(two_checkpoints, tiny, monkeypatch):
    from dfedit_train.diffusion import Diffusion

    out = two_checkpoints
    before = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    latest_before = (out / "latest.json").read_bytes()
    monkeypatch.setattr(Diffusion, "loss", lambda self, *a, **k: torch.full((2,), float("nan"), requires_grad=True))
    msgs = []
    with pytest.raises(DfeditError, match=r"non-finite for 5 steps in a row \(steps 4-8\).*last good checkpoint is "
                                          r"step-00000004"):
        resume(out, configs(tiny), log=msgs, given={"train.epochs": 6, "train.save_every": 10}, max_bad_steps=5)
    assert sum("non-finite loss" in m for m in msgs) == 3  # a few warnings, not one per step forever
    after = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    assert after == before and (out / "latest.json").read_bytes() == latest_before


def test_rotation_keeps_the_last_clean_checkpoint(tmp_path, tiny, monkeypatch):
    """Saves after steps that were all skipped do not count as healthy: with keep_checkpoints=1 the
    last checkpoint that trained cleanly survives beside them."""
    from dfedit_train.diffusion import Diffusion

    out = tmp_path / "run"
    real = Diffusion.loss
    calls = {"n": 0}

    def nan_after_epoch_1(self, *a, **k):
        calls["n"] += 1
        loss = real(self, *a, **k)
        return loss * float("nan") if calls["n"] > 2 * 2 else loss  # 2 micro-batches per step

    monkeypatch.setattr(Diffusion, "loss", nan_after_epoch_1)
    train(out, *configs(tiny, epochs=3, keep_checkpoints=1), progress=False, max_bad_steps=100, log=lambda m: None)
    assert steps(out) == [2, 6]  # step 4 (trained only skipped steps) rotated out, step 2 protected


# ---- damaged and hand-edited configs ---------------------------------------------------------------

CASES = {
    "random-bytes": (lambda c: None, "is not text"),
    "not-json": (lambda c: "{'model': 1", "is not valid JSON"),
    "no-model": (lambda c: {k: v for k, v in c.items() if k != "model"}, "has no 'model' section"),
    "no-diffusion": (lambda c: {k: v for k, v in c.items() if k != "diffusion"}, "has no 'diffusion' section"),
    "no-data": (lambda c: {k: v for k, v in c.items() if k != "data"}, "has no 'data' section"),
    "no-text-encoder": (lambda c: {k: v for k, v in c.items() if k != "text_encoder"},
                        "has no 'text_encoder' section"),
    "image-size-text": (lambda c: {**c, "model": {**c["model"], "image_size": "thirty-two"}},
                        "model.image_size must be an integer, got 'thirty-two'"),
    "channels-int": (lambda c: {**c, "model": {**c["model"], "channels": 64}},
                     "model.channels must be a list of integers, got 64"),
    "format-version-string": (lambda c: {**c, "format_version": "1"}, "format_version must be an integer, got '1'"),
    "image-size-negative": (lambda c: {**c, "model": {**c["model"], "image_size": -32}},
                            "model.image_size must be at least 1, got -32"),
    "unknown-key": (lambda c: {**c, "model": {**c["model"], "widths": [1]}}, "model.widths is not a known setting"),
    "std-zero": (lambda c: {**c, "data": {**c["data"], "std": [0, 1, 1]}}, "data.std must be three finite numbers > 0"),
    "newer": (lambda c: {**c, "format_version": 99}, "written by a newer dfedit-train"),
}


def _damage(cfg_path, case):
    make, frag = CASES[case]
    cfg = json.loads(cfg_path.read_text())
    new = make(cfg)
    if new is None:
        cfg_path.write_bytes(os.urandom(200) + b"\xff")
    else:
        cfg_path.write_text(new if isinstance(new, str) else json.dumps(new))
    return frag


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, npm_tarball, tiny_encoder):
    from emoji_synth import tiny_configs

    out = tmp_path_factory.mktemp("one") / "run"
    train(out, *tiny_configs(tiny_encoder, npm_tarball, **{**CONFIG, "epochs": 1}), progress=False)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_config_is_one_line_naming_file_and_key(tmp_path, one_run, case):
    import shutil

    from dfedit.cli import app as dfedit_app

    run = tmp_path / "run"
    shutil.copytree(one_run, run)
    cfg_path = latest(run) / "config.json"
    frag = _damage(cfg_path, case)
    # dfedit on the step directory: one line naming the file (not "not a diffusers model")
    r = runner.invoke(dfedit_app, ["sample", "grinning face", "--model", str(cfg_path.parent), "-o",
                                   str(tmp_path / "x.png"), "--quiet"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    err = r.stderr.strip()
    assert "\n" not in err and str(cfg_path) in err and frag in err, err
    assert not (tmp_path / "x.png").exists()
    # export: the same sentence, nothing written
    r = invoke("export", cfg_path.parent, tmp_path / "exp")
    assert frag in last_line_error(r, str(cfg_path)) and not (tmp_path / "exp").exists()
    # resume: the only checkpoint cannot be resumed -> one line saying why, nothing started
    r = invoke("emoji", "--preset", "tiny", "--out", run, "--quiet")
    assert frag.split(" (")[0] in last_line_error(r, "none can be resumed")


def test_weights_of_another_preset_are_not_resumed(tmp_path, tiny, two_checkpoints):
    """A step directory holding another model's tensors (or optimizer state): skipped with the
    reason, the run resumes from the step before; alone, it is one line, not a load_state_dict
    traceback."""
    other = tmp_path / "other"
    train(other, *configs(tiny, epochs=1), progress=False)  # same preset, but...
    wide = tmp_path / "wide"
    mc, dc, tc, dac = configs(tiny, epochs=1)
    train(wide, replace(mc, channels=(32, 32), head_dim=16), dc, tc, dac, progress=False)
    newest = two_checkpoints / "checkpoints" / "step-00000004"
    (newest / "optimizer.safetensors").write_bytes((latest(wide) / "optimizer.safetensors").read_bytes())
    # without their manifests (as checkpoints written before manifests), the shape checks find it
    (newest / eck.MANIFEST).unlink()
    (latest(other) / eck.MANIFEST).unlink()
    _, saved, msgs = resume(two_checkpoints, configs(tiny), given={"train.epochs": 3}, max_steps=5)
    assert saved["state"]["step"] == 2
    assert any("skipping step-00000004: optimizer.safetensors is for another model" in m for m in msgs), msgs
    # the model weights of another width in the only checkpoint: one line, nothing trained
    (latest(other) / "model.safetensors").write_bytes((latest(wide) / "model.safetensors").read_bytes())
    with pytest.raises(DfeditError, match="none can be resumed.*model.safetensors does not hold the model"):
        resume(other, configs(tiny), given={"train.epochs": 2})


# ---- disk full -------------------------------------------------------------------------------------

def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_disk_full_during_a_checkpoint_save(two_checkpoints, npm_tarball, tiny_encoder, monkeypatch):
    out = two_checkpoints
    before = _snapshot(out / "checkpoints")
    latest_before = (out / "latest.json").read_bytes()
    full = DiskFull(monkeypatch, "optimizer.safetensors")
    r = invoke("emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder, "--max-length",
               "12", "--out", out, "--quiet", "--epochs", "3")
    err = last_line_error(r, "cannot write checkpoint")
    assert full.hits == 1 and "no space left on the device (needs" in err and " free in " in err
    assert "the previous checkpoint (step-00000004) is intact" in err
    assert _snapshot(out / "checkpoints") == before and (out / "latest.json").read_bytes() == latest_before
    assert litter(out) == [] and not (out / ".lock").exists()


def test_disk_full_found_before_writing(two_checkpoints, tiny, monkeypatch):
    monkeypatch.setattr(ckpt, "free_space", lambda p: 1000)
    wrote = []
    monkeypatch.setattr(ckpt, "write_file", lambda *a, **k: wrote.append(a))
    with pytest.raises(DfeditError, match=r"needs \d+\.\d MiB, 1000 bytes free"):
        resume(two_checkpoints, configs(tiny), given={"train.epochs": 3})
    assert wrote == [] and litter(two_checkpoints) == []


def test_disk_full_during_export_keeps_the_previous_export(one_run, tmp_path, monkeypatch):
    dest = tmp_path / "model"
    r = invoke("export", one_run, dest)
    assert r.exit_code == 0, r.output
    before = _snapshot(dest)
    full = DiskFull(monkeypatch, "ema.safetensors", room=10)
    err = last_line_error(invoke("export", one_run, dest, "--fp32"), "cannot write the export")
    assert full.hits == 1 and "no space left on the device" in err and "previous export in it is intact" in err
    assert _snapshot(dest) == before and list(tmp_path.glob(".*.tmp")) == []
    # a new destination: nothing at all is left
    err = last_line_error(invoke("export", one_run, tmp_path / "new"), "cannot write the export")
    assert not (tmp_path / "new").exists() and list(tmp_path.glob(".*.tmp")) == []
    # export refuses a directory that holds anything else (e.g. the run itself) before reading weights
    last_line_error(invoke("export", one_run, one_run), "holds other files")


# ---- signals ---------------------------------------------------------------------------------------

def _train_cmd(out, npm_tarball, tiny_encoder, *extra):
    return [sys.executable, "-m", "dfedit_train", "emoji", "--preset", "tiny", "--data", str(npm_tarball),
            "--text-encoder", str(tiny_encoder), "--max-length", "12", "--out", str(out), "--quiet",
            "--sample-every", "0", "--save-every", "1", "--batch-size", "4", "--grad-accum", "2", "--flip-prob", "0.5",
            "--threads", "1", *extra]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_training_saves_and_resumes_bit_exact(tmp_path, npm_tarball, tiny_encoder, sig, code):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(out, npm_tarball, tiny_encoder, "--epochs", "300"), stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 240
        while not (out / "latest.json").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read()
        # meanwhile, a second trainer on the same --out refuses
        r = invoke("emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder, "--out", out,
                   "--quiet")
        last_line_error(r, f"is in use by another dfedit-train (pid {proc.pid}")
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGINT"
    assert len(lines) == 1 and lines[0].startswith(f"dfedit-train: error: stopped by {name} at step "), err
    stop = int(lines[0].split(" at step ")[1].split(";")[0])
    assert f"checkpoint saved (checkpoints/step-{stop:08d})" in lines[0]
    assert latest(out).name == f"step-{stop:08d}" and not (out / ".lock").exists() and litter(out) == []
    # resume to stop + 4 and compare with an uninterrupted run to the same step
    common = ["--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder, "--max-length", "12",
              "--quiet", "--sample-every", "0", "--save-every", "1", "--batch-size", "4", "--grad-accum", "2",
              "--flip-prob", "0.5", "--epochs", "300", "--max-steps", stop + 4]
    r = invoke("emoji", *common, "--out", out)
    assert r.exit_code == 0 and f"from checkpoints/step-{stop:08d} (step {stop} of" in r.stderr, r.output
    r = invoke("emoji", *common, "--out", tmp_path / "straight")
    assert r.exit_code == 0, r.output
    assert latest(out).name == latest(tmp_path / "straight").name == f"step-{stop + 4:08d}"
    assert_same_weights(latest(tmp_path / "straight"), latest(out))


def _wait_for_torch_import(pid, deadline):
    """Until the process has mapped libtorch: it is inside `import torch`, after our handler."""
    while time.time() < deadline:
        try:
            if "libtorch" in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            return False
        time.sleep(0.005)
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the import in progress")
@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_imports_is_one_line(tmp_path, npm_tarball, tiny_encoder, sig, code, word):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(out, npm_tarball, tiny_encoder, "--epochs", "1"), stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert _wait_for_torch_import(proc.pid, time.time() + 60)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert err.strip() == f"dfedit-train: error: {word} while starting; nothing was written", err
    assert not out.exists()


# ---- options, checked before any data is prepared ----------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["--save-every", "0"], "--save-every must be at least 1, got 0"),
    (["--threads", "-1"], "--threads must be at least 1, got -1"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be at least 1"),
    (["--cfg-dropout", "1.5"], "--cfg-dropout must be a number in [0, 1]"),
    (["--ema-decay", "-0.1"], "--ema-decay must be a number in [0, 1]"),
    (["--max-length", "0"], "--max-length must be at least 1"),
    (["--image-size", "-32"], "--image-size must be at least 1"),
    (["--image-size", "15"], "not divisible"),  # a layout rule: checked once the configs are merged
    (["--sample-every", "-1"], "--sample-every must be at least 0"),
])
def test_bad_options_fail_before_data_preparation(tmp_path, monkeypatch, args, fragment):
    from dfedit_train import data

    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data prepared before the options were checked"))
    if "15" not in args:  # a bad value of one option is refused before the run directory is even locked
        monkeypatch.setattr(RunLock, "acquire", lambda self: pytest.fail("--out touched before the check"))
    out = tmp_path / "new" / "run"
    last_line_error(invoke("emoji", "--preset", "tiny", "--out", out, *args), fragment)
    assert not (tmp_path / "new").exists()  # no empty --out left behind


def test_unusable_out_is_found_first(tmp_path, monkeypatch):
    from dfedit_train import data

    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data prepared before --out was checked"))
    f = tmp_path / "file"
    f.write_text("mine")
    last_line_error(invoke("emoji", "--preset", "tiny", "--out", f), "is a file, not a run directory")
    last_line_error(invoke("emoji", "--preset", "tiny", "--out", f / "run"), "is a file")
    assert f.read_text() == "mine"
    real = os.access
    # tests run as root, for whom every directory is writable: pretend tmp_path is not
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path and m & os.W_OK else real(p, m))
    last_line_error(invoke("emoji", "--preset", "tiny", "--out", tmp_path / "run"), "is not writable")
    last_line_error(invoke("export", tmp_path, tmp_path / "exp"), "not a writable directory")


def test_a_failed_start_leaves_no_empty_out(tmp_path, tiny_encoder):
    out = tmp_path / "run"
    last_line_error(invoke("emoji", "--preset", "tiny", "--data", tmp_path / "nope", "--text-encoder", tiny_encoder,
                          "--out", out, "--quiet"), "does not exist")
    assert not out.exists()


def test_resume_with_another_preset_refuses_like_lr(one_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(one_run, run)
    last_line_error(invoke("emoji", "--preset", "cpu", "--out", run, "--quiet"),
                   "holds a run with image_size=16, --preset cpu has 32")
    last_line_error(invoke("emoji", "--preset", "tiny", "--out", run, "--quiet", "--lr", "0.5"), "holds a run with lr=")


def test_cpu_out_of_memory_is_recognised(tmp_path, monkeypatch, npm_tarball, tiny_encoder):
    from dfedit_train import train as train_mod

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(train_mod, "train", oom)
    last_line_error(invoke("emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder,
                          "--out", tmp_path / "run", "--quiet"), "out of memory (CPU RAM): lower --batch-size")


def test_a_signal_swallowed_during_preparation_still_stops_the_run(tmp_path, monkeypatch, npm_tarball, tiny_encoder):
    """Library code with a bare `except:` may swallow the KeyboardInterrupt / Terminated a signal
    raises while data is prepared; the run must still stop before training, not carry on."""
    from dfedit_train import data as data_mod

    real = data_mod.prepare_data

    def prepare_then_swallow(*a, **k):
        d = real(*a, **k)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except BaseException:  # what a careless library does
            pass
        return d

    monkeypatch.setattr(data_mod, "prepare_data", prepare_then_swallow)
    out = tmp_path / "run"
    r = invoke("emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder, "--max-length", "12",
               "--out", out, "--quiet", "--sample-every", "0")
    last_line_error(r, "stopped by SIGTERM before the first step; nothing new to save", code=143)
    assert steps(out) == [] and not (out / ".lock").exists()
