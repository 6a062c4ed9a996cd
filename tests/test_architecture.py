"""The shape of the code: which package may import which (issue 11).

dfedit is the library, dfedit_train the trainer built on it: the trainer imports the library,
never the reverse, so that dfedit runs (and is read) without the trainer. Checked on the source
itself: every import statement of every file, at module level or inside a function, found by
walking its AST, with relative imports resolved.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("dfedit", "dfedit_train")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports (absolute names), wherever the import statement sits."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}  # `from pkg import module`
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.add(node.args[0].value)
    return out


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    mods = {module_name(p): p for p in files}
    return {m: {i for i in imports_of(p) if i in mods} for m, p in mods.items()}


def top(mod: str) -> str:
    return mod.split(".")[0]


def test_no_module_of_dfedit_imports_dfedit_train():
    g = graph()
    offenders = sorted(f"{m} imports {i}" for m, deps in g.items() if top(m) == "dfedit"
                       for i in deps if top(i) == "dfedit_train")
    assert not offenders, offenders
    # the walk does see imports, including the ones inside functions
    assert "dfedit.emoji.checkpoint" in g["dfedit.backends.emoji"] and "dfedit.emoji.unet" in g["dfedit_train.train"]


def test_the_import_graph_between_the_packages_has_no_cycle():
    g = graph()
    pkg_edges = {(top(m), top(i)) for m, deps in g.items() for i in deps if top(m) != top(i)}
    assert pkg_edges == {("dfedit_train", "dfedit")}
    # and no module reaches itself through the other package
    for start in g:
        seen, stack = set(), [start]
        while stack:
            for nxt in g[stack.pop()]:
                if nxt == start and top(start) != top(nxt):
                    raise AssertionError(f"{start} imports itself through the other package")
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)


def test_both_clis_share_one_error_kit():
    g = graph()
    assert "dfedit.cli_errors" in g["dfedit.cli"] and "dfedit.cli_errors" in g["dfedit_train.cli"]
    assert "dfedit.cli" not in g["dfedit_train.cli"]
