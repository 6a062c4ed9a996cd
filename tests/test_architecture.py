"""The shape of the code: which package may import which, and no import circle anywhere.

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


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every
    import circle, whatever its length."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def module_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports, at module level or inside a function. A module naming its
    own package (`from . import register` in a registry's plug-in file) is no edge: Python imports
    the package before any module in it whatever the code says, and the package loads its plug-ins
    by name (importlib), after defining what they use."""
    g = graph()
    return {m: {i for i in deps if i != m and not m.startswith(i + ".")} for m, deps in g.items()}


def test_the_import_graph_has_no_circle():
    g = module_graph()
    pkg_edges = {(top(m), top(i)) for m, deps in g.items() for i in deps if top(m) != top(i)}
    assert pkg_edges == {("dfedit_train", "dfedit")}
    assert cycles(g) == [], cycles(g)


def test_the_circle_search_finds_a_planted_circle():
    g = module_graph()
    assert "dfedit.plan" in g["dfedit.pipeline"]
    planted = {**g, "dfedit.plan": g["dfedit.plan"] | {"dfedit.pipeline"}}
    assert any({"dfedit.pipeline", "dfedit.plan"} <= set(c) for c in cycles(planted))
    longer = {**g, "dfedit.errors": g["dfedit.errors"] | {"dfedit.cli"}}  # cli -> ... -> errors -> cli
    assert any("dfedit.cli" in c and "dfedit.errors" in c and len(c) > 2 for c in cycles(longer))


def test_both_clis_share_one_error_kit():
    g = graph()
    assert "dfedit.cli_errors" in g["dfedit.cli"] and "dfedit.cli_errors" in g["dfedit_train.cli"]
    assert "dfedit.cli" not in g["dfedit_train.cli"]
