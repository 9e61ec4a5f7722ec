"""The layering of the code, read from every import (function-level ones included) with an AST walk.

From the bottom: `loradash` (the library), `baselines` (methods), `experiments.harness` (configs, registry, plan,
loop, records), the families (`experiments.<family>`), `experiments.report` (statistics, tables, verdicts),
`experiments.analysis` (research add-ons), `experiments.cli`. A module imports only from its own layer or a lower
one; no import circle exists between the harness's modules (imports under `TYPE_CHECKING` do not count); the
plan and the report never import the executor.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("loradash", "baselines", "experiments")
LAYERS = ["loradash", "baselines", "harness", "family", "report", "analysis", "cli"]
EXECUTOR = {"experiments.harness.sweep", "experiments.harness.train"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "experiments":
        return parts[0]
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1] if parts[1] in ("harness", "report", "analysis") else "family"


def imports(path: Path) -> set[str]:
    """Every project module `path` imports (`from x import y` counts as x.y when x.y is a module)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    # imports for type checkers only never run; a submodule reading an attribute of its own package (its
    # `__version__`) is not a dependency on its siblings
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for n in ast.walk(node)
    }
    ancestors = {".".join(here.split(".")[:i]) for i in range(1, len(here.split(".")))}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and n in MODULES}
    return found - {here} - ancestors


MODULES = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
GRAPH = {m: imports(p) for m, p in MODULES.items()}


def test_the_walk_sees_the_known_edges():  # guards the walk itself: an empty graph would pass everything
    assert "experiments.harness.plan" in GRAPH["experiments.report.tables"]
    assert "experiments.harness.train" in GRAPH["experiments.harness.sweep"]  # a function-level import
    assert "baselines.lora" in GRAPH["baselines.loradash"]  # a relative import


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_it(module):
    above = [m for m in GRAPH[module] if LAYERS.index(layer(m)) > LAYERS.index(layer(module))]
    assert not above, f"{module} ({layer(module)}) imports from higher layers: {above}"


def test_the_plan_and_the_report_never_import_the_executor():
    for module in MODULES:
        if module == "experiments.harness.plan" or layer(module) == "report":
            assert not GRAPH[module] & EXECUTOR, module


def test_no_import_circles():
    """No circle among the harness's modules (baselines and experiments). The library is left to its own tests:
    loradash.clock imports loradash.layer inside a function, a deliberate lazy import that breaks its circle."""
    graph = {
        m: {w for w in ws if layer(w) != "loradash"} for m, ws in GRAPH.items() if layer(m) != "loradash"
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_a_circle_or_an_upward_import_is_caught(monkeypatch):
    """The checks above fail on a planted violation (so they cannot pass vacuously)."""
    monkeypatch.setitem(
        GRAPH, "experiments.harness.records", GRAPH["experiments.harness.records"] | {"experiments.cli"}
    )
    with pytest.raises(AssertionError, match="higher layers"):
        test_no_module_imports_from_a_layer_above_it("experiments.harness.records")
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circles()
