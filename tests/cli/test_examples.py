"""Every example script runs with no arguments on the built-in emoji model (issue 23), here at one
model call per run (STEPS=1): its outputs are written, each records how it was made, and every
prompt it encodes is one of the model's training captions (held-out ones come out as smudges)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfedit.emoji.checkpoint import BUILTIN
from dfedit.outputs import read_metadata

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.sh") if p.name != "common.sh")
# what each script writes (besides display copies)
WRITES = {
    "sample.sh": [f"sample-{i}.png" for i in range(6)] + ["sample-0-100steps.png", "sample-0-20steps.png",
                                                           "sample-0-no-cfg.png", "sample-0.gif"],
    "sdedit.sh": ["noise.png", "denoise.png", "sdedit-photo.png", "sdedit-sketch.png", "sdedit-text.png"],
    "inpaint.sh": ["inpaint.png", "inpaint-repaint.png", "inpaint.gif"],
    "anagram.sh": ["anagram-flip.png", "anagram-flip-2.png", "anagram.gif"],
    "hybrid.sh": ["hybrid.png", "hybrid-2.png", "hybrid.gif"],
}


def test_every_script_is_listed():
    assert SCRIPTS == sorted(WRITES)


def _env(out: Path, **extra) -> dict:
    env = {**os.environ, "OUT": str(out), "STEPS": "1", "OMP_NUM_THREADS": "1", **extra}
    for k in ("EMOJI", "IF_MODEL", "SEED"):
        env.pop(k, None)
    return env


def _script_calls(script: str, tmp_path: Path) -> list[list[str]]:
    """Run the script with a `dfedit` on PATH that only records its arguments (bash, set -e and
    every line of the script run for real; a start of Python costs ~3 s on a busy 2-core machine,
    so the commands themselves then run in this process)."""
    shim = tmp_path / "bin" / "dfedit"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import json, os, sys; "
                    "open(os.environ[\"DFEDIT_CALLS\"], \"a\").write(json.dumps(sys.argv[1:]) + chr(10))' \"$@\"\n")
    shim.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = _env(tmp_path / "gallery", DFEDIT_CALLS=str(calls),
               PATH=f"{shim.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["bash", str(EXAMPLES / script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in calls.read_text().splitlines()]


def _check_outputs(script: str, out: Path) -> None:
    for name in WRITES[script]:
        assert (out / name).exists(), (name, sorted(p.name for p in out.iterdir()))
    train = set(json.loads((BUILTIN["emoji"] / "captions.json").read_text(encoding="utf-8"))["train"])
    for png in out.glob("*.png"):
        meta = read_metadata(png)
        assert "--model emoji" in meta["command_line"], png.name
        for p in meta.get("encoded_prompts", []):
            assert p in train, (png.name, p)  # a caption the model was trained on
        assert meta.get("prompt", "") != "" or meta["command"] == "noise", png.name  # no unconditional edits


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_with_no_arguments(script, tmp_path, cli, monkeypatch):
    calls = _script_calls(script, tmp_path)
    assert calls and all(c[c.index("--model") + 1] == "emoji" and "--steps" in c or c[0] == "noise" for c in calls)
    monkeypatch.chdir(tmp_path)
    for args in calls:
        code, out, err = cli(*args)
        assert code == 0, (args, err)
        assert "Traceback" not in out + err
    _check_outputs(script, tmp_path / "gallery")


def test_an_example_runs_end_to_end_with_the_real_dfedit(tmp_path):
    """One script with the installed `dfedit` itself (the others' commands run in-process above)."""
    env = _env(tmp_path / "gallery", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["bash", str(EXAMPLES / "anagram.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    _check_outputs("anagram.sh", tmp_path / "gallery")


def test_the_inputs_are_what_make_inputs_writes(tmp_path):
    import numpy as np
    from PIL import Image
    spec = __import__("importlib.util").util.spec_from_file_location("make_inputs", EXAMPLES / "make_inputs.py")
    mod = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.sketch(tmp_path / "sketch.png")
    mod.mask(tmp_path / "mask.png")
    for name in ("sketch.png", "mask.png"):
        a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (tmp_path / name, EXAMPLES / "inputs" / name))
        assert np.array_equal(a, b), name
    assert read_metadata(EXAMPLES / "inputs" / "face.png")["prompt"] == "grinning face"
