"""The house of issue 18, read from the code's own imports (every `import` statement, those inside functions too):
packages import only packages below them, and no module imports itself back through others.

    pipeline                         runs the stages, the one `nws` command line
    pretrain  incremental  cluster   the stages (and the Slurm library): none imports another
    loaders                          the runtime loaders of the prepared formats
    data_prep                        offline preparation and the prepared formats
    base                             config sections, layout and output names, tracking, training utilities
    nws                              the method library
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"nws": 0, "base": 1, "data_prep": 2, "loaders": 3, "pretrain": 4, "incremental": 4, "cluster": 4,
          "pipeline": 5}


def modules() -> dict[str, Path]:
    """{dotted module name: file} of every module of the packages above (tests, bench and scripts are not rooms)."""
    found = {}
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` (at `path`) imports: `from a.b import c` is a.b.c when that is a module, else
    a.b; relative imports are resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a module under a package
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def floor(module: str) -> tuple[str, int]:
    package = module.split(".")[0]
    return package, FLOORS[package]


def test_no_package_imports_one_above_it_or_beside_it(graph):
    wrong = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                   if floor(a)[0] != floor(b)[0] and floor(b)[1] >= floor(a)[1])
    assert not wrong, "imports that run up or sideways:\n" + "\n".join(wrong)


def test_no_import_cycle(graph):
    """Tarjan's strongly connected components of the module graph: each must be a single module."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_walk_sees_the_imports_it_judges(graph):
    """The walk itself: an import inside a function counts (pipeline.cli imports the stages in its commands)."""
    assert {"pretrain.run", "incremental.loop", "base.ranks"} <= graph["pipeline.cli"]
    assert graph["nws"], "nws/__init__.py imports its modules"
