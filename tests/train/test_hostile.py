"""Hostile files and planted links (issue 24): every test plants one and checks that nothing is
written through a link, nothing of the user's is deleted, damaged or mixed files are never used,
and each fault is one line (docs/reliability.md, "Hostile files").
"""

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import re

import pytest
import torch
from typer.testing import CliRunner

import dfedit.files
from dfedit.cli import app as dfedit_app
from dfedit_train import checkpoint as ckpt
from dfedit_train import data as datamod
from dfedit_train import export as exportmod
from dfedit_train.cli import app as train_app
from dfedit_train.train import train

HERE = Path(__file__).parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from test_checkpoint_faults import (assert_same_weights, configs, latest, reference, resume,  # noqa: E402,F401
                         steps, two_checkpoints)

runner = CliRunner()
MANIFEST = "manifest.json"
PREDICTED = "0123456789abcdef"  # the "random" part an attacker guesses, and the one the tests make us draw


def invoke(app, *args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(r, fragment, prefix):
    assert r.exit_code == 1, r.output
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in r.output and err.startswith(prefix), r.output
    assert fragment in err, err
    return err


def snap(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def rewrite_manifest(d: Path) -> None:
    """What an attacker who edits a model's files does: a manifest that matches them."""
    names = [p.relative_to(d).as_posix() for p in sorted(d.rglob("*")) if p.is_file() and p.name != MANIFEST]
    sha = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in names}
    (d / MANIFEST).write_text(json.dumps({"format": "dfedit/manifest", "sha256": sha}))


@pytest.fixture
def predictable(monkeypatch):
    """Make every first draw of a temporary name the predicted one (then random): planting a link at
    the predicted name is then planting it where the next write would go."""
    import dfedit.files

    real, calls = dfedit.files.secrets.token_hex, {"n": 0}

    def token_hex(n):
        calls["n"] += 1
        return PREDICTED if calls["n"] % 2 else real(n)

    monkeypatch.setattr(dfedit.files.secrets, "token_hex", token_hex)


# ---- writes never follow a planted link ------------------------------------------------------------

def _written(monkeypatch, fn):
    """The final paths every write of fn() produced (files and temporary directories)."""
    seen = []
    writer = sys.modules[dfedit.files.atomic_write.__module__]
    real_write, real_dir = writer.write_file, getattr(writer, "make_temp_dir", None)

    def write_file(path, data):
        seen.append(Path(path))
        return real_write(path, data)

    def make_temp_dir(target):
        seen.append(Path(target))
        return real_dir(target)

    monkeypatch.setattr(writer, "write_file", write_file)
    monkeypatch.setattr(ckpt, "write_file", write_file)
    monkeypatch.setattr(ckpt, "make_temp_dir", make_temp_dir, raising=False)
    monkeypatch.setattr(exportmod, "write_file", write_file)
    monkeypatch.setattr(exportmod, "make_temp_dir", make_temp_dir)
    monkeypatch.setattr(datamod, "make_temp_dir", make_temp_dir, raising=False)
    fn()
    monkeypatch.undo()
    targets = set()
    for p in seen:  # the target of a temporary of either shape: .NAME.dfedit-PID-RANDOM.tmp, .NAME.PID.tmp
        m = re.match(r"^\.(.+?)\.(dfedit-)?\d+(-[0-9a-f]{16})?\.tmp$", p.name)
        targets.add(p.with_name(m[1]) if m else p)
    return targets


def test_links_planted_at_every_temp_name_leave_the_victims_intact(tmp_path, tiny, monkeypatch, predictable):
    """A run (checkpoints, latest.json, log.jsonl, grids, loss.png, data and caption caches) and an
    export, with links planted at every name their temporaries would take, by this version's
    predicted draw and by the old predictable `.NAME.PID.tmp` / `.tmp-step-N-PID` names."""
    cfgs = configs(tiny, epochs=2, sample_every=1)
    # a rehearsal in other directories: which files does such a run write?
    monkeypatch.setenv("DFEDIT_CACHE", str(tmp_path / "c1"))
    rehearsal = _written(monkeypatch, lambda: (train(tmp_path / "r1", *cfgs, progress=False),
                                                exportmod.export(tmp_path / "r1", tmp_path / "e1")))
    monkeypatch.setenv("DFEDIT_CACHE", str(tmp_path / "c2"))
    moves = {str(tmp_path / a): str(tmp_path / b) for a, b in (("c1", "c2"), ("r1", "r2"), ("e1", "e2"))}
    victim, victim_dir = tmp_path / "victim.txt", tmp_path / "victim-dir"
    victim.write_bytes(b"precious")
    victim_dir.mkdir()
    (victim_dir / "keep").write_bytes(b"also precious")
    pid, planted = os.getpid(), 0
    for t in rehearsal:
        s = str(t)
        for a, b in moves.items():
            s = s.replace(a, b, 1) if s.startswith(a) else s
        t = Path(s)
        if t.parent.name.startswith("."):  # a file inside a temporary directory: made by mkdir, ours alone
            continue
        t.parent.mkdir(parents=True, exist_ok=True)
        names = [f".{t.name}.dfedit-{pid}-{PREDICTED}.tmp", f".{t.name}.{pid}.tmp", f".tmp-{t.name}-{pid}",
                 f".tmp-export-{t.name}-{pid}"]
        for n in names:
            if not (t.parent / n).exists():
                (t.parent / n).symlink_to(victim_dir if "step" in t.name or "export" in n or t.name == "e2"
                                          else victim)
                planted += 1
    for t in [tmp_path / "r2" / "checkpoints" / f"step-{s:08d}" for s in (2, 4)] + [tmp_path / "e2"]:
        t.parent.mkdir(parents=True, exist_ok=True)
        for n in (f".{t.name}.dfedit-{pid}-{PREDICTED}.tmp", f".tmp-{t.name}-{pid}", f".tmp-export-{t.name}-{pid}"):
            if not (t.parent / n).exists():
                (t.parent / n).symlink_to(victim_dir)
                planted += 1
    assert planted > 20
    train(tmp_path / "r2", *cfgs, progress=False)
    exportmod.export(tmp_path / "r2", tmp_path / "e2")
    assert victim.read_bytes() == b"precious" and sorted(os.listdir(victim_dir)) == ["keep"]
    assert (victim_dir / "keep").read_bytes() == b"also precious"
    assert steps(tmp_path / "r2") == [2, 4] and (tmp_path / "e2" / "ema.safetensors").is_file()
    assert (tmp_path / "r2" / "samples" / "epoch-0002.png").is_file()


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_planted_lock_is_refused_and_its_target_untouched(tmp_path, npm_tarball, tiny_encoder, kind):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (out / ".lock").symlink_to(victim) if kind == "symlink" else os.link(victim, out / ".lock")
    r = invoke(train_app, "emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder,
               "--max-length", "12", "--out", out, "--quiet", "--epochs", "1")
    one_line(r, ".lock is a" if kind == "symlink" else "hard link", "dfedit-train: error: ")
    assert victim.read_bytes() == b"precious" and not (out / "checkpoints").exists()


# ---- clean-up touches only our own files -----------------------------------------------------------

def test_user_files_named_like_temporaries_survive_a_training_start(tmp_path, tiny):
    out = tmp_path / "run"
    for d in (out, out / "checkpoints", out / "samples"):
        d.mkdir(parents=True, exist_ok=True)
    mine = {out / ".notes.tmp": b"todo", out / ".draft.tmp" / "chapter1.txt": b"It was a dark night",
            out / "checkpoints" / ".todo.tmp": b"x", out / "samples" / ".a.png.999999999.tmp": b"an old name",
            out / ".tmp-step-00000002-999999999" / "f": b"old shape too"}
    for p, b in mine.items():
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b)
    ours = out / "checkpoints" / f".step-00000002.dfedit-999999999-{PREDICTED}.tmp"  # a dead writer's
    ours.mkdir()
    (ours / "model.safetensors").write_bytes(b"half")
    msgs = []
    train(out, *configs(tiny, epochs=1), progress=False, log=msgs.append)
    assert {p: p.read_bytes() for p in mine} == mine
    assert not ours.exists() and any("removed 1 temporary" in m for m in msgs), msgs


# ---- checkpoints and exports verified ----------------------------------------------------------------

def test_a_flipped_bit_is_skipped_with_a_note_and_the_resume_is_bit_exact(two_checkpoints, tiny, reference):
    out = two_checkpoints
    f = out / "checkpoints" / "step-00000004" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1000] ^= 0x01  # one bit in a weight's mantissa: finite, the right shape, only the manifest sees it
    f.write_bytes(bytes(data))
    r, saved, msgs = resume(out, configs(tiny), given={"train.epochs": 3})
    assert saved["state"]["step"] == 2, msgs
    assert any("skipping step-00000004: model.safetensors does not match manifest.json" in m for m in msgs), msgs
    assert (out / "checkpoints" / "damaged-step-00000004").is_dir()
    assert r["step"] == 6 and steps(out) == [2, 4, 6]
    assert_same_weights(latest(reference), latest(out))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, npm_tarball, tiny_encoder):
    from emoji_synth import tiny_configs
    from fault_child import CONFIG

    root = tmp_path_factory.mktemp("exp")
    train(root / "run", *tiny_configs(tiny_encoder, npm_tarball, **{**CONFIG, "epochs": 1}), progress=False)
    exportmod.export(root / "run", root / "a")
    exportmod.export(root / "run", root / "b", fp16=False)
    return root


KILL_EXPORT = """
import os, signal, sys
from pathlib import Path
from dfedit_train import export as exportmod
run, dest, where = sys.argv[1:4]
real_write, real_replace = exportmod.write_file, os.replace
def write_file(path, data):
    real_write(path, data)
    if where == "before-swap" and Path(path).name == "record.json":
        os.kill(os.getpid(), signal.SIGKILL)
def replace(src, dst, *a, **k):
    real_replace(src, dst, *a, **k)
    if where == "between-replaces" and Path(dst).parent == Path(dest):  # a file replaced inside DEST
        os.kill(os.getpid(), signal.SIGKILL)
exportmod.write_file, os.replace = write_file, replace
exportmod.export(run, dest, fp16=False)
"""


@pytest.mark.parametrize("where", ["before-swap", "between-replaces"])
def test_an_export_is_swapped_in_whole_and_a_mixed_one_is_refused(exported, tmp_path, where):
    """Killed while exporting over a previous export: DEST is the old export or the new one, whole
    (an export by file replaces could be killed between them: there are none left)."""
    dest = tmp_path / "model"
    shutil.copytree(exported / "a", dest)
    before = snap(dest)
    p = subprocess.run([sys.executable, "-c", KILL_EXPORT, str(exported / "run"), str(dest), where],
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert p.returncode in (0, -signal.SIGKILL), p.stderr
    assert snap(dest) in (before, snap(exported / "b")), sorted(snap(dest))
    if where == "before-swap":
        assert p.returncode == -signal.SIGKILL and snap(dest) == before
    exportmod.export(exported / "run", dest, fp16=False)  # the next export removes what a killed one left
    assert snap(dest) == snap(exported / "b") and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # what exporting file by file could leave: new weights beside the old config and record
    shutil.copy(exported / "a" / "ema.safetensors", dest / "ema.safetensors")
    r = invoke(dfedit_app, "sample", "grinning face", "--model", dest, "-o", tmp_path / "x.png", "--quiet")
    one_line(r, "ema.safetensors does not match manifest.json", "dfedit: error: ")
    assert not (tmp_path / "x.png").exists()


PICKLE = b"cos\nsystem\n(S'touch PWNED'\ntR."  # unpickling runs `touch PWNED`


def _pickle_encoder(d: Path, tiny_encoder: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for f in tiny_encoder.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, d / f.name)
    (d / "pytorch_model.bin").write_bytes(PICKLE)


@pytest.mark.parametrize("where", ["outside", "inside", "run"])
def test_a_pickle_only_text_encoder_is_refused_without_being_opened(exported, tmp_path, tiny_encoder, monkeypatch,
                                                                      where):
    monkeypatch.chdir(tmp_path)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    if where == "run":  # a run's own checkpoint may name any local encoder: still never a pickle
        model = tmp_path / "run"
        shutil.copytree(exported / "run", model)
        ck = latest(model)
        _pickle_encoder(tmp_path / "evil", tiny_encoder)
    else:
        model = ck = tmp_path / "model"
        shutil.copytree(exported / "a", model)
        _pickle_encoder(model / "text_encoder" if where == "inside" else tmp_path / "evil", tiny_encoder)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["text_encoder"]["name"] = "text_encoder" if where == "inside" else str(tmp_path / "evil")
    (ck / "config.json").write_text(json.dumps(cfg))
    rewrite_manifest(ck)
    r = invoke(dfedit_app, "sample", "a never cached prompt", "--model", model, "-o", tmp_path / "x.png", "--quiet",
               "--cache-dir", tmp_path / "cache")
    one_line(r, "must be 'minilm' or a directory inside the model directory" if where == "outside" else
             "has no model.safetensors", "dfedit: error: ")
    assert loads == [] and not (tmp_path / "PWNED").exists()


def test_an_export_carries_a_local_text_encoder_inside_it(exported, tiny_encoder):
    d = exported / "a"
    assert sorted(p.name for p in (d / "text_encoder").iterdir()) == sorted(
        f.name for f in tiny_encoder.iterdir() if exportmod.ENCODER_FILES.match(f.name))
    assert json.loads((d / "config.json").read_text())["text_encoder"]["name"] == "text_encoder"


# ---- one line for every fault -------------------------------------------------------------------------

def test_wrong_kind_run_dir_entries_are_warnings_and_the_run_checkpoints(tmp_path, npm_tarball, tiny_encoder):
    out = tmp_path / "run"
    out.mkdir()
    (out / "samples").write_text("a file where the grids go")
    (out / "log.jsonl").mkdir()
    r = invoke(train_app, "emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder,
               "--max-length", "12", "--out", out, "--quiet", "--epochs", "1", "--sample-every", "1")
    assert r.exit_code == 0, r.output
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert any("samples is not a directory" in w for w in warnings), r.stderr
    assert any("log.jsonl (a directory)" in w for w in warnings), r.stderr
    assert "Traceback" not in r.output and steps(out) == [2]


def test_latest_json_nested_100000_deep_resumes_from_the_newest_good_step(two_checkpoints, tiny):
    out = two_checkpoints
    (out / "latest.json").write_text("[" * 100_000 + "]" * 100_000)
    r, saved, msgs = resume(out, configs(tiny), given={"train.epochs": 3}, max_steps=5)
    assert saved["state"]["step"] == 4
    assert any("latest.json is not valid JSON (nested too deeply)" in m for m in msgs), msgs


# ---- npm tarballs -------------------------------------------------------------------------------------

def _tar_member(name: str, data: bytes = b"", size: int | None = None, link: str | None = None) -> bytes:
    info = tarfile.TarInfo(f"package/{name}")
    info.size = len(data) if size is None else size
    if link is not None:
        info.type, info.linkname, info.size = tarfile.SYMTYPE, link, 0
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def huge_member_tarball(path: Path, size: int = 3 << 30) -> None:
    """A small .tgz whose PNG member really holds `size` zero bytes (3 GiB by default), written
    without ever holding or writing them: deflate blocks of zeros after full flushes are identical,
    so one compressed MiB is repeated."""
    from emoji_synth import npm_entries

    mib = 1 << 20
    head = _tar_member("package.json", b"{}") + _tar_member("emoji.json", json.dumps(npm_entries()).encode())
    head += _tar_member("img/google/64/1f600.png", size=size)  # the header alone: the zeros follow
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero_block = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = zero_block.compress(b"\0" * mib) + zero_block.flush(zlib.Z_FULL_FLUSH)
    tail = b"\0" * (-size % 512) + b"\0" * 1024
    crc = zlib.crc32(head)
    zeros = b"\0" * mib
    for _ in range(size // mib):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(tail, crc)
    total = len(head) + size + len(tail)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        f.write(c.compress(head) + c.flush(zlib.Z_FULL_FLUSH))
        for _ in range(size // mib):
            f.write(block)
        f.write(c.compress(tail) + c.flush())
        f.write(crc.to_bytes(4, "little") + (total & 0xFFFFFFFF).to_bytes(4, "little"))


PEAK = """
import sys, time
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss starts at the parent's RSS at fork)
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024
from dfedit.errors import DfeditError
from dfedit_train import data
t = time.perf_counter()
try:
    data.load(sys.argv[1], use_cache=False)
    print("loaded")
except DfeditError as e:
    print("refused:", e)
print(f"peak_mb={peak_mb():.0f} s={time.perf_counter() - t:.2f}")
"""


def test_a_tarball_with_a_3_gib_member_is_refused_in_little_memory(tmp_path):
    tgz = tmp_path / "big.tgz"
    huge_member_tarball(tgz)
    assert tgz.stat().st_size < 20 << 20
    p = subprocess.run([sys.executable, "-c", PEAK, str(tgz)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    out = p.stdout
    assert "refused:" in out and "claims 3,221,225,472 bytes" in out, out + p.stderr
    peak = int(out.split("peak_mb=")[1].split()[0])
    print(f"3 GiB member: {out.strip()}")
    assert peak < 1024, out


def test_links_in_a_tarball_are_ignored_with_a_note(tmp_path, capsys):
    tgz = tmp_path / "linked.tgz"
    raw = _tar_member("package.json", b"{}") + _tar_member("emoji.json", link="/etc/passwd") + b"\0" * 1024
    import gzip
    tgz.write_bytes(gzip.compress(raw))
    r = invoke(train_app, "data", "--data", tgz)
    one_line(r, "has no package/emoji.json (only a link of that name, which is never followed)",
             "dfedit-train: error: ")
    # a linked image among real files: ignored with a note, the rest is read
    from emoji_synth import npm_entries, npm_files
    raw = b"".join(_tar_member(f"img/google/64/{n}", b) for n, b in npm_files().items())
    raw = _tar_member("emoji.json", json.dumps(npm_entries()).encode()) + raw
    tgz.write_bytes(gzip.compress(raw + _tar_member("img/google/64/x.png", link="/etc/passwd") + b"\0" * 1024))
    r = invoke(train_app, "data", "--data", tgz)
    assert r.exit_code == 0 and "ignored 1 link(s) in the tarball (e.g. package/img/google/64/x.png)" in r.stderr


def test_a_tampered_cached_tarball_is_fetched_again(tmp_path, monkeypatch, npm_tarball, fake_npm):
    npm_dir = tmp_path / "c" / "npm"
    npm_dir.mkdir(parents=True)
    tampered = npm_dir / "emoji-datasource-google-16.0.0.tgz"
    shutil.copy(npm_tarball, tampered)
    with open(tampered, "ab") as f:
        f.write(b"\0" * 1024)  # still a valid tarball: only the pin tells
    pin = "sha512-" + base64.b64encode(hashlib.sha512(npm_tarball.read_bytes()).digest()).decode()
    monkeypatch.setattr(datamod, "NPM_INTEGRITY", {"google": pin})
    fake_npm("ok")
    r = invoke(train_app, "data")
    assert r.exit_code == 0, r.output
    assert "does not match the pinned checksum" in r.stderr
    assert tampered.read_bytes() == npm_tarball.read_bytes()


from test_cache_faults import fake_npm  # noqa: E402,F401
