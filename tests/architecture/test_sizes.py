"""Small modules with one job: no module over 500 lines, no function over 60, unless a comment
right above the ``def`` (``# long: why``) says why."""

from __future__ import annotations

import ast

from tests.architecture.test_layers import SRC

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def test_no_module_over_500_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_60_lines_without_a_reason() -> None:
    long = []
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            reason = first >= 2 and lines[first - 2].strip().startswith("# long:")
            if size > MAX_FUNCTION_LINES and not reason:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(sorted(long))
