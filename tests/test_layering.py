"""The package's layering, read from the source (AST), not from what happens to be imported.

Arrows point down: ``cli -> engine/inference -> models, discriminators, normalizers,
data -> registry``, with the package facade (``stainadapt/__init__.py``) above all but
the CLI, so nothing inside the package imports the facade either. Every import counts: module-level,
function-level (lazy) and ``if TYPE_CHECKING:`` ones, ``importlib.import_module`` with a
literal name, and a string constant that names a stainadapt module exactly (the lazy
``name -> module`` tables of the package facades), because each of them is a dependency
that a refactoring has to respect even when it does not run at import time.

A failing test prints every offending ``module -> imported module`` pair.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "stainadapt"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Facades allowed to import ``stainadapt.engine`` from outside it, and why.
ENGINE_FACADES = {
    # the public API re-exports ``train`` and ``resume`` (lazily, through its ``_LAZY``
    # table and for type checkers): ``import stainadapt; stainadapt.train(cfg)``
    "stainadapt": "public facade re-exporting train/resume",
}

#: Modules allowed to import ``stainadapt.cli`` from outside it, and why.
CLI_LAUNCHERS = {
    # ``python -m stainadapt`` / ``torchrun -m stainadapt`` start the CLI; nothing imports
    # ``__main__``, so the arrow still ends at the top
    "stainadapt.__main__": "python -m stainadapt runs the CLI",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _sources()


def _known(name: str) -> str | None:
    """The deepest stainadapt module that ``name`` is or lies in (``None``: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _targets(module: str, path: Path) -> Iterator[str]:
    """Every stainadapt module that ``module`` imports, at any depth of its source."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (hit := _known(alias.name)) is not None:
                    yield hit
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if _known(target) is None:
                continue
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{target}.{alias.name}"
                yield sub if sub in MODULES else _known(target)
        elif isinstance(node, ast.Call) and _called(node) in ("import_module", "__import__"):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and (hit := _known(str(arg.value))) is not None:
                yield hit
        elif isinstance(node, ast.Constant) and _names_submodule(node.value):
            yield node.value  # an entry of a lazy ``name -> module`` table


def _names_submodule(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PACKAGE + ".") and value in MODULES


def _called(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _edges() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        graph[module] |= {t for t in _targets(module, path) if t != module}
    return graph


GRAPH = _edges()


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _report(pairs: list[tuple[str, str]]) -> str:
    return "\n".join(f"  {a} -> {b}" for a, b in sorted(pairs))


def test_the_scan_sees_the_package():
    """Guards the checks below against passing vacuously on a broken scan."""
    assert "stainadapt.engine.trainer" in MODULES and "stainadapt.cli.app" in MODULES
    assert "stainadapt.config" in GRAPH["stainadapt.engine.trainer"]
    assert "stainadapt.cli.app" in GRAPH["stainadapt.__main__"]
    assert "stainadapt.engine.trainer" in GRAPH["stainadapt"]  # lazy table + TYPE_CHECKING
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    pairs = [(a, b) for comp in cycles for a in comp for b in GRAPH[a] if b in comp]
    assert not cycles, "import cycles (module -> import within a cycle):\n" + _report(pairs)


def test_only_cli_and_engine_import_the_engine():
    pairs = [(m, t) for m, targets in GRAPH.items() for t in targets
             if _inside(t, "stainadapt.engine") and m not in ENGINE_FACADES
             and not _inside(m, "stainadapt.engine") and not _inside(m, "stainadapt.cli")]
    assert not pairs, "imports of stainadapt.engine from below it:\n" + _report(pairs)


def test_nothing_below_the_cli_imports_it():
    pairs = [(m, t) for m, targets in GRAPH.items() for t in targets
             if _inside(t, "stainadapt.cli") and m not in CLI_LAUNCHERS
             and not _inside(m, "stainadapt.cli")]
    assert not pairs, "imports of stainadapt.cli from below it:\n" + _report(pairs)
