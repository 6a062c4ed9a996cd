"""The library names parameters, the command line names flags (dfedit.errors.ParamError)."""

import ast
import re
from pathlib import Path

import pytest

import dfedit
from dfedit.backends.hub import resolve_snapshot
from dfedit.devices import pick_device, pick_dtype
from dfedit.errors import DfeditError, ParamError
from dfedit.samplers import check_sampler

PACKAGE = Path(dfedit.__file__).parent
FLAG = re.compile(r"(^|[\s(])--[a-z]")


def test_param_error_spells_every_named_parameter_both_ways():
    e = ParamError("stage2_cfg", "applies with {upscale} only: leave out {stage2_cfg}", also=("upscale",))
    assert str(e) == "stage2_cfg applies with upscale only: leave out stage2_cfg"
    assert e.cli_message() == "--stage2-cfg applies with --upscale only: leave out --stage2-cfg"
    # braces that name nothing listed are the user's text, kept as typed
    assert ParamError("prompt", "{dog} is too long").cli_message() == "--prompt {dog} is too long"


@pytest.mark.parametrize("call, library, cli", [
    (lambda: check_sampler("ddpm", eta=0.5), "eta applies to sampler ddim only",
     "--eta applies to --sampler ddim only"),
    (lambda: check_sampler("plms"), "sampler 'plms' is unknown", "--sampler 'plms' is unknown"),
    (lambda: pick_device("meta"), "device 'meta' is unknown", "--device 'meta' is unknown"),
    (lambda: pick_dtype("int8", None), "dtype 'int8' is unknown", "--dtype 'int8' is unknown"),
    (lambda: resolve_snapshot("emoj", ["unet"]), "model emoj does not exist: did you mean model emoji",
     "--model emoj does not exist: did you mean --model emoji"),
])
def test_library_errors_name_parameters_and_the_cli_names_flags(call, library, cli):
    with pytest.raises(ParamError) as info:
        call()
    assert str(info.value).startswith(library) and not FLAG.search(str(info.value))
    assert info.value.cli_message().startswith(cli)


def test_no_library_error_message_names_a_flag():
    """Every string in a `raise` outside the CLI modules, and every module-level string constant
    (hints that messages are built from), is free of `--option`: flags are the CLI's business."""
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        if f.name in ("cli.py", "cli_options.py", "cli_errors.py"):
            continue
        tree = ast.parse(f.read_text())
        nodes = [n.exc for n in ast.walk(tree) if isinstance(n, ast.Raise) and n.exc is not None]
        nodes += [n.value for n in tree.body if isinstance(n, ast.Assign)]
        for node in nodes:
            for c in ast.walk(node):
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and FLAG.search(c.value):
                    found.append(f"{f.relative_to(PACKAGE)}:{c.lineno}: {c.value[:60]}")
    assert not found, "library messages that name flags:\n" + "\n".join(found)


def test_a_param_error_is_a_dfedit_error():
    assert issubclass(ParamError, DfeditError)  # callers that catch DfeditError keep working
