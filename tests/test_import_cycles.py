"""No import cycles inside the ``sanakit`` package, type-hint-only ones included.

Every module's imports are read with :mod:`ast` (module level, inside functions and under
``if TYPE_CHECKING:``; absolute and relative). ``from a.b import c`` points at the module
``a.b.c`` when ``c`` is a submodule, else at ``a.b``; a module does not depend on the packages
above it merely by living in them (a package ``__init__`` that re-exports its submodules is not a
cycle). A cycle in that graph fails the test with the modules that form it.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import sanakit

ROOT = Path(sanakit.__file__).parent


def package_modules(folder: Path, name: str) -> dict[str, Path]:
    """{dotted module name: source file} of the package in ``folder`` and all its subpackages."""
    out = {name: folder / "__init__.py"}
    for info in pkgutil.iter_modules([str(folder)]):
        if info.ispkg:
            out |= package_modules(folder / info.name, f"{name}.{info.name}")
        else:
            out[f"{name}.{info.name}"] = folder / f"{info.name}.py"
    return out


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports anywhere in its source."""
    source = modules[module]
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    is_package = source.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(_known(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # the package that "." names: the module itself for a package, else its parent
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                out.add(submodule if submodule in modules else _known(base, modules))
    out.discard(None)
    out.discard(module)
    return out  # type: ignore[return-value]


def import_graph(folder: Path, name: str) -> dict[str, set[str]]:
    modules = package_modules(folder, name)
    return {m: imports_of(m, modules) for m in sorted(modules)}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, each sorted (Tarjan's
    algorithm, iterative): the modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return sorted(components)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component."""
    return [_cycle_in(graph, set(c)) for c in strongly_connected(graph)]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of ``component`` (breadth-first)."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle in the component {sorted(component)}")


def test_sanakit_has_no_import_cycles() -> None:
    graph = import_graph(ROOT, "sanakit")
    assert len(graph) > 50  # the walk found the package
    assert "sanakit.compat.simpletuner.trainer" in graph["sanakit.compat.simpletuner.importer"]
    groups = strongly_connected(graph)
    report = [
        " -> ".join(_cycle_in(graph, set(group)))
        + f"   (modules in the cycles: {', '.join(group)})"
        for group in groups
    ]
    assert not groups, f"{len(groups)} group(s) of modules import each other:\n" + "\n".join(report)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cycles_through_type_hints_functions_and_relative_imports_are_found(tmp_path) -> None:
    _write(
        tmp_path / "pkg",
        {
            "__init__.py": "from pkg.a import A\n",  # re-export: not a cycle by itself
            "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n"
            "class A: ...\n",
            "b.py": "from . import a\nclass B: ...\n",
            "sub/__init__.py": "",
            "sub/c.py": "def f():\n    import pkg.sub.d\n",
            "sub/d.py": "from ..sub import c\n",
            "sub/e.py": "from pkg import a\nimport pkg.sub\n",
        },
    )
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.sub.e"] == {"pkg.a", "pkg.sub"}
    assert find_cycles(graph) == [
        ["pkg.a", "pkg.b", "pkg.a"],
        ["pkg.sub.c", "pkg.sub.d", "pkg.sub.c"],
    ]


def test_a_longer_cycle_is_reported_as_a_path() -> None:
    graph = {"m.a": {"m.b"}, "m.b": {"m.c", "m.x"}, "m.c": {"m.a"}, "m.x": set()}
    assert find_cycles(graph) == [["m.a", "m.b", "m.c", "m.a"]]
    assert find_cycles({"m.a": {"m.b"}, "m.b": set()}) == []
