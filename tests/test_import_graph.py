"""The import graph of ``univg/`` has no circles, and no import runs up the layers.

Every ``import``/``from`` statement in every module counts: at module level, inside functions
(a function-level import that closes a circle only hides it) and under ``if TYPE_CHECKING:`` (a
type shared by two modules belongs in a module below both). Nodes are modules (a package is its
``__init__``); ``from pkg import name`` points at ``pkg.name`` when that is a module, else at
``pkg``. Parent packages a dotted import runs implicitly are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "univg"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the univg modules it imports (explicitly, not through parent packages)."""
    files = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source
                    for alias in node.names
                ]
            for target in targets:
                # ``import a.b.c`` names a.b.c; keep the longest prefix that is a univg module
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_graph_sees_the_package():
    graph = import_graph()
    assert "univg.modules.base" in graph and "univg.data.readers.common" in graph
    assert sum(len(targets) for targets in graph.values()) > 50


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    detail = "\n".join(
        " <-> ".join(c) + "\n    " + "; ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a] & set(c)))
        for c in found
    )
    assert not found, f"import cycles among univg's modules:\n{detail}"


#: Each top-level part of univg and its layer: a module imports only from its own layer or lower
#: ones. ``univg`` itself is the package's ``__init__`` (it quiets the console, :mod:`univg.core.console`).
LAYERS: dict[str, int] = {
    # the base everything may import
    "univg": 0,
    "core": 0,
    # the model: backbone families, tokenizer, checkpoints, decoding
    "model": 1,
    # what trains and is trained on
    "data": 2,
    "rl": 2,
    "engines": 2,
    "distributed": 2,
    # scoring and results; the trainer's callbacks
    "evaluation": 3,
    "callbacks": 3,
    # the LightningModules
    "modules": 4,
    # entry points and recipes
    "__main__": 5,
    "cli": 5,
    "export": 5,
    "predict": 5,
    "reports": 5,
    "hparams_view": 5,
    "sharded_checkpoint": 5,
    "cot": 5,
    "demo": 5,
    "rehearsal": 5,
}


def part(module: str) -> str:
    """The top-level part of univg a module belongs to (``univg.rl.rollout.batch`` -> ``rl``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a higher layer."""
    return sorted(
        (name, target)
        for name, targets in graph.items()
        for target in targets
        if LAYERS[part(target)] > LAYERS[part(name)]
    )


def test_every_part_has_a_layer():
    graph = import_graph()
    missing = sorted({part(name) for name in graph} - set(LAYERS))
    assert not missing, f"top-level parts of univg without a layer in LAYERS: {missing}"


def test_no_import_runs_up_the_layers():
    graph = import_graph()
    found = upward_imports(graph)
    detail = "\n".join(f"{a} (layer {LAYERS[part(a)]}) -> {b} (layer {LAYERS[part(b)]})" for a, b in found)
    assert not found, f"imports from a higher layer:\n{detail}"


if __name__ == "__main__":
    graph = import_graph()
    for component in cycles(graph):
        print(" <-> ".join(component))
    for a, b in upward_imports(graph):
        print(f"{a} -> {b} (up)")
