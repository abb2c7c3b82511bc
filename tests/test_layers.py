"""The house rules, checked from the source: no import circles, and no module imports from a layer above it.

Layers, lowest first (README "Layout"): a module may import its own layer and the layers below. Function-level
imports count too: an upward import inside a function is still an arrow that runs back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "stretto"
LAYERS = [
    {"data", "sampling", "devices", "images", "spec", "parallel"},
    {"models"},
    {"eval", "checkpoints", "cache"},
    {"pipelines"},
    {"", "train", "distill", "tune", "bench", "serve", "demo"},  # "": the `stretto` API facade
    {"cli"},
]


def module_graph() -> dict[str, set[str]]:
    """Every stretto module -> the stretto modules it imports (anywhere in the file)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = ["stretto", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule, not the package's own code
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in found:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("stretto") and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def layer_of(module: str) -> int:
    room = module.split(".")[1] if "." in module else ""
    for i, rooms in enumerate(LAYERS):
        if room in rooms:
            return i
    raise AssertionError(f"{module}: its room {room!r} is in no layer; add it to LAYERS and the README layout")


def test_every_module_is_in_a_layer():
    graph = module_graph()
    assert len(graph) > 50, "the source walk found too few modules"
    for module in graph:
        layer_of(module)


def test_no_module_imports_from_a_layer_above_it():
    graph = module_graph()
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m))
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_import_circles():
    # A package importing its own submodules (its __init__ re-exporting them) is not a circle.
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in module_graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circles.append(" -> ".join(path[path.index(t) :] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_check_sees_an_upward_import():
    # The walk must resolve a function-level import into its module, or the layer test would pass vacuously.
    graph = module_graph()
    assert "stretto.pipelines.image" in graph["stretto"]
    assert layer_of("stretto.cache.policy") < layer_of("stretto.pipelines.image")
