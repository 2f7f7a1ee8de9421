"""The package's imports point only down its layers, and no modules import each other in a cycle.

Read from the source (every ``import`` and ``from ... import``, also inside functions); imports
under ``if TYPE_CHECKING:`` are annotations, not dependencies, and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "budgetspan"

#: Bottom first. A module may import its own layer and the layers below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("attributes",),
    ("events",),
    ("accounting",),
    ("config_numbers",),  # ConfigError and the grammar of numbers in configuration (under config)
    ("config",),
    ("runs",),
    ("cache",),  # keys from the run's identity; used by calls (@tool(cache=...))
    ("calls",),
    ("instrumentation", "processors"),  # side by side: neither imports the other
    # The collector tier reuses the in-process exposition (processors.metric_cells, labels,
    # buckets) and the phase defaults (runs.phases), so its series are the same by construction.
    ("collector",),
    ("setup",),
    ("autoinstrument",),  # the opentelemetry-instrument hook, over setup
    ("jobs",),  # background jobs: a run per task on the shared ledger (over runs, calls, accounting)
    ("__init__",),  # the public API
    ("report",),
    ("demo",),
    ("cli",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layer unit of a module: its first component under budgetspan (``__init__`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(path: Path, known: set[str], src: Path = SRC) -> set[str]:
    """The budgetspan modules ``path`` imports at run time."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "budgetspan")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.split(".")[0] != "budgetspan":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def graph(src: Path = SRC) -> dict[str, set[str]]:
    paths = sorted(src.rglob("*.py"))
    known = {module_name(p, src) for p in paths}
    return {module_name(p, src): imports_of(p, known, src) & known for p in paths}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{mod} ({unit_of(mod)}) imports {dep} ({unit_of(dep)})"
        for mod, deps in g.items()
        for dep in deps
        if unit_of(dep) != unit_of(mod) and RANK[unit_of(dep)] >= RANK[unit_of(mod)]
    )


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(m) for m in graph()}
    assert units <= set(RANK), f"modules outside any layer: {sorted(units - set(RANK))}"


def test_imports_point_only_down() -> None:
    upward = upward_imports(graph())
    assert not upward, "imports that point up (or sideways) the layers:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g[node]):
            if dep == node:
                continue
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_catches_upward_lazy_and_relative_imports(tmp_path: Path) -> None:
    """A tree with an upward import inside a function and a relative one is reported; a
    TYPE_CHECKING import is not."""
    src = tmp_path / "budgetspan"
    for pkg in ("runs", "calls"):
        (src / pkg).mkdir(parents=True)
        (src / pkg / "__init__.py").write_text("")
    (src / "__init__.py").write_text("")
    (src / "calls" / "call.py").write_text("X = 1\n")
    (src / "runs" / "scopes.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from budgetspan.calls import call\n"
        "def f():\n    from budgetspan.calls.call import X\n"
    )
    (src / "runs" / "run.py").write_text("from ..calls import call\n")
    found = upward_imports(graph(src))
    assert found == [
        "budgetspan.runs.run (runs) imports budgetspan.calls.call (calls)",
        "budgetspan.runs.scopes (runs) imports budgetspan.calls.call (calls)",
    ]


def test_public_scopes_shadow_no_module() -> None:
    import importlib

    import budgetspan

    for name in budgetspan.__all__:
        assert not (SRC / f"{name}.py").exists() and not (SRC / name).is_dir(), name
    assert importlib.import_module("budgetspan.runs.run").__name__ == "budgetspan.runs.run"
