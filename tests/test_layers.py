"""The package's layers, read from its source: lower layers never import higher ones, and the model layer's
modules do not import one another in a circle (not even through imports deferred into functions, which only
hide a circle until someone moves them).

Layers, bottom up: models/ (families, loading, registry) < service.py (the request path) < engine, api/, CLI,
Ray. Imports under `if TYPE_CHECKING:` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stable_audio_service

PACKAGE = "stable_audio_service"
ROOT = Path(stable_audio_service.__file__).parent
# What sits above the model layer and the request path: neither may import any of these.
ABOVE_MODELS = ("api", "engine", "service", "cli", "serving", "web", "client", "telemetry")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of this package that `name` imports anywhere in its body (functions included)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith(PACKAGE):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(module: str) -> str:
    return module.removeprefix(f"{PACKAGE}.").split(".")[0]


def test_the_graph_sees_deferred_imports():
    """The walker itself: a function-level import is an edge, a TYPE_CHECKING one is not."""
    graph = _graph()
    assert f"{PACKAGE}.models.registry" in graph[f"{PACKAGE}.models.loading"]
    assert f"{PACKAGE}.models.stable_audio_3.autoencoder" in graph[f"{PACKAGE}.models.tiny"]  # inside a function
    assert f"{PACKAGE}.config" not in graph[f"{PACKAGE}.models.family"]  # TYPE_CHECKING only


def test_the_model_layer_imports_nothing_above_it():
    bad = {
        module: sorted(m for m in imported if _layer(m) in ABOVE_MODELS)
        for module, imported in _graph().items()
        if _layer(module) == "models"
    }
    assert not {m: i for m, i in bad.items() if i}, "models/ imports a higher layer"


def test_the_request_path_imports_no_ingress():
    imported = _graph()[f"{PACKAGE}.service"]
    above = sorted(m for m in imported if _layer(m) in ABOVE_MODELS)
    assert not above, f"service.py imports {above}"


def test_the_model_layer_has_no_import_cycle():
    graph = {m: {i for i in imported if _layer(i) == "models"} for m, imported in _graph().items()}
    graph = {m: imported for m, imported in graph.items() if _layer(m) == "models"}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
