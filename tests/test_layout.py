"""The package's shape, checked: no import cycles, dependencies point downwards, the seams stay where
they are (torch-pruning in ``structural/graph.py``, Lightning internals in ``_lightning/``), small
modules, no ``print`` in library code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "lightning_prune"
MAX_LINES = 460  # "no module over about 450 lines"


def _modules() -> dict[str, Path]:
    found = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = file
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        if ".".join(parts[:cut]) in MODULES:
            return ".".join(parts[:cut])
    return None


def _imports(module: str) -> set[str]:
    """Every module of the package ``module`` imports, at the top or lazily (inside functions, TYPE_CHECKING)."""
    file = MODULES[module]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found |= {t for a in node.names if (t := _resolve(a.name))}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                if target:
                    found.add(target)
    found.discard(module)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return out


def test_there_are_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_no_module_imports_a_package_above_it() -> None:
    """A module never imports its own ancestor package's ``__init__`` (which re-exports it)."""
    upward = [(m, t) for m, targets in GRAPH.items() for t in targets if m.startswith(t + ".")]
    assert upward == []


#: Lower layers never import higher ones.
LAYERS = [
    {"lightning_prune.errors", "lightning_prune._logging", "lightning_prune.state", "lightning_prune.schedules",
     "lightning_prune.losses", "lightning_prune.summary"},
    {"lightning_prune.structural", "lightning_prune.importance", "lightning_prune.models", "lightning_prune.data",
     "lightning_prune.sparse", "lightning_prune.artifacts", "lightning_prune.export"},
    {"lightning_prune._lightning", "lightning_prune.evaluation"},
    {"lightning_prune.callbacks", "lightning_prune.demos"},
    {"lightning_prune.lightning_cli", "lightning_prune.tuning"},
    {"lightning_prune.cli"},
]


def _layer(module: str) -> int | None:
    for level, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return level
    return None


def test_dependencies_point_downwards() -> None:
    upward = [(m, t) for m, targets in GRAPH.items() for t in targets
              if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)]  # type: ignore[operator]
    assert upward == []


def _source(module: str) -> str:
    return MODULES[module].read_text()


def test_torch_pruning_is_imported_by_the_graph_module_only() -> None:
    users = [m for m in MODULES if "torch_pruning" in _source(m) and "import torch_pruning" in _source(m)]
    assert users == ["lightning_prune.structural.graph"]


LIGHTNING_INTERNALS = ("fit_loop", "_checkpoint_connector", "_optimizers_to_device", "configure_ddp", "setup_optimizers",
                       "sanity_checking =", "sanity_check_description", "_MultiProcessingLauncher")


@pytest.mark.parametrize("internal", LIGHTNING_INTERNALS)
def test_lightning_internals_live_in_the_seam(internal: str) -> None:
    users = [m for m in MODULES if internal in _source(m) and not m.startswith("lightning_prune._lightning")]
    assert users == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small_and_do_not_print(module: str) -> None:
    text = _source(module)
    assert len(text.splitlines()) <= MAX_LINES
    calls = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id == "print"]
    assert calls == []


def test_the_cycle_check_can_see_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
