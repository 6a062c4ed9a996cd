"""The benchmark runner must keep working: a --quick run on tiny models fills every CPU section.

The numbers of a quick run mean nothing (one round, tiny sizes); what is tested is that the one
documented command runs end to end and writes the tables it promises, and that it never
overwrites docs/benchmarks.md with them.
"""

import json
import sys
from pathlib import Path

import pytest

from dfedit.constants import BUILTIN_MODELS

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for m in ("run", "bench_if", "bench_sampler", "bench_samplers", "bench_train", "report"):
        sys.modules.pop(m, None)
    import run
    return run


def test_quick_run_writes_every_cpu_section(runner, tmp_path):
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n\nhand-written text\n\n<!-- train-cuda:begin -->\nnot measured\n<!-- train-cuda:end -->\n")
    runner.main(["--quick", "--doc", str(doc)])
    text = doc.read_text()
    assert "hand-written text" in text and "<!-- train-cuda:begin -->\nnot measured\n" in text  # others kept
    for section in ("env-cpu", "sampler-cpu", "samplers-cpu", "train-cpu", "if-cpu"):
        assert f"<!-- {section}:begin -->" in text and f"<!-- {section}:end -->" in text
    assert text.count("with `python benchmarks/run.py --quick --doc") == 4 and "torch 2." in text
    for row in ("(a) IF: dfedit loop / bare UNet forwards", "(b) IF: DFEdit.sample / IFPipeline",
                "(a) emoji:", "(b) emoji:", "(c) IF: anagram", "(c) emoji: hybrid", "(d) IF: channels_last"):
        assert row in text
    assert "1 network call/step, batch 4 vs 2" in text and "1 network call/step, batch 3 vs 2" in text
    assert "| fp32, eager |" in text and "| bf16 autocast, eager |" in text
    assert "AttnAddedKVProcessor2_0" in text
    assert "| dpmpp-2m, --steps 20 | 20 |" in text and "| ddpm, stride 30 (default) | 34 |" in text
    assert "top-5 ratio, training captions (record.json)" in text and "| `dfedit --help` |" in text
    # the default sampler's row carries the shipped model's recorded recognisability, the others say they lack one
    rec = json.loads((BUILTIN_MODELS["emoji"] / "record.json").read_text())["eval"]["recognise"]
    ddpm = next(line for line in text.splitlines() if line.startswith("| ddpm, stride 30 (default) | 34 |"))
    assert ddpm.endswith(f"| {rec['rows']['train']['ratio_top5']:.3f} |")
    assert "| dpmpp-2m, --steps 20 | 20 |" in text and "| not in the record |" in text


def test_quick_run_refuses_the_real_doc(runner):
    with pytest.raises(SystemExit):
        runner.main(["--quick"])
