"""The `dfedit-train` CLI end to end on the tiny preset, and bad input as one line + exit 1."""

import json

import pytest
from typer.testing import CliRunner

from dfedit_train.cli import app
from helpers import one_line_error

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_resume_and_eval(tmp_path, npm_tarball, tiny_encoder, monkeypatch):
    from dfedit_train import data, recognise
    from test_recognise import other_vendor
    # The judge learns from "another vendor": here a shifted copy of the synthetic set (no download).
    monkeypatch.setattr(recognise, "_judge_sets", lambda: {"other": other_vendor(data.load(str(npm_tarball), "google"))})
    out = tmp_path / "run"
    common = ["emoji", "--preset", "tiny", "--data", npm_tarball, "--text-encoder", tiny_encoder,
              "--max-length", "12", "--out", out, "--quiet", "--sample-every", "0"]
    r = invoke(*common, "--epochs", "1")
    assert r.exit_code == 0, r.output
    step1 = json.loads((out / "latest.json").read_text())["step"]
    r = invoke(*common, "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert "resuming" in r.stderr
    assert json.loads((out / "latest.json").read_text())["step"] == 2 * step1
    one_line_error(invoke(*common, "--epochs", "2", "--lr", "0.1"), "holds a run with lr=")
    r = invoke("eval", out, "--n-samples", "4", "--stride", "100", "--quiet", "--max-images", "16")
    assert r.exit_code == 0, r.output
    ev = json.loads((out / "checkpoints" / f"step-{2 * step1:08d}" / "eval" / "eval.json").read_text())
    assert set(ev["val_loss"]) == set(ev["bands"]) and len(ev["samples"]) == 4
    assert ev["nn_rmse_samples_median"] > 0 and "held-out eps-MSE" in r.stdout
    # The recognisability table comes with it, and runs alone too.
    rows = ev["recognise"]["rows"]
    assert rows["train"]["n"] > 0 and 0 <= rows["train"]["top5"] <= 1 and "ratio 5" in r.stdout
    r = invoke("recognise", out, "--quiet", "--n-train", "3", "--n-heldout", "2", "--stride", "200")
    assert r.exit_code == 0, r.output
    ev = json.loads((out / "checkpoints" / f"step-{2 * step1:08d}" / "eval" / "eval.json").read_text())
    assert ev["recognise"]["rows"]["train"]["n"] == 3 and "val_loss" in ev  # the loss bands are kept
    # the ceiling of the model's own set, diversity and the copy rate come with the table
    assert "ceiling: google" in r.stdout and "copy rate" in r.stdout and "evaluation only" in r.stdout
    assert ev["recognise"]["diversity"]["n_seeds"] == 8 and ev["recognise"]["diversity"]["copies"]["n"] == 24
    assert (out / "checkpoints" / f"step-{2 * step1:08d}" / "eval" / "recognise.png").is_file()
    one_line_error(invoke("recognise", out, "--stride", "0"), "--stride must be")
    # any of dfedit's samplers, by model calls; recorded with the numbers
    r = invoke("recognise", out, "--quiet", "--n-train", "3", "--n-heldout", "0", "--sampler", "dpmpp-2m",
               "--steps", "4")
    assert r.exit_code == 0, r.output
    ev = json.loads((out / "checkpoints" / f"step-{2 * step1:08d}" / "eval" / "eval.json").read_text())
    assert (ev["recognise"]["sampler"], ev["recognise"]["steps"], ev["recognise"]["stride"]) == ("dpmpp-2m", 4, None)
    assert "dpmpp-2m 4 steps" in r.stdout
    one_line_error(invoke("recognise", out, "--sampler", "dpm"), "--sampler 'dpm' is unknown")


@pytest.mark.parametrize("case", ["missing", "no-name", "corrupt"])
def test_bad_data_is_one_line(tmp_path, tiny_encoder, corrupt_folder, case):
    if case == "missing":
        data, frag = tmp_path / "nope", "does not exist"
    elif case == "no-name":
        (tmp_path / "full_emoji.csv").write_text("#,emoji,unicode\n1,x,U+1F600\n")
        data, frag = tmp_path, "no 'name' column"
    else:
        data, frag = corrupt_folder, "not a valid image"
    one_line_error(invoke("emoji", "--preset", "tiny", "--data", data, "--text-encoder", tiny_encoder,
                          "--out", tmp_path / "o", "--quiet"), frag)


def test_missing_npm_is_one_line(tmp_path, monkeypatch, tiny_encoder):
    from dfedit_train import data
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    one_line_error(invoke("emoji", "--preset", "tiny", "--vendor", "twitter", "--text-encoder", tiny_encoder,
                          "--out", tmp_path / "o", "--quiet"), "npm was not found")


def test_bad_options_are_one_line(tmp_path, npm_tarball):
    one_line_error(invoke("emoji", "--preset", "huge", "--out", tmp_path / "o"), "unknown preset")
    one_line_error(invoke("emoji", "--preset", "tiny", "--schedule", "quadratic", "--out", tmp_path / "o"),
                   "--schedule")
    one_line_error(invoke("emoji", "--preset", "tiny", "--channels", "16,x", "--out", tmp_path / "o"), "--channels")
    one_line_error(invoke("eval", tmp_path), "not a dfedit-train checkpoint")
    # Flags parse before the preset is checked.
    one_line_error(invoke("emoji", "--base-only", "--no-compile", "--preset", "huge", "--out", tmp_path / "o"),
                   "unknown preset")


def test_data_command(npm_tarball):
    r = invoke("data", "--data", npm_tarball)
    assert r.exit_code == 0, r.output
    assert "36 images" in r.stdout
    r = invoke("data", "--data", npm_tarball, "--base-only")
    assert r.exit_code == 0 and "21 images" in r.stdout
