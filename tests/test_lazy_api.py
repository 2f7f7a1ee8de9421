"""The public API is imported on first use (``budgetspan/__init__.py``, PEP 562): every exported
name must still resolve, to the object its module defines, and ``import budgetspan`` must not
import the heavy layers (what keeps ``budgetspan report``'s start-up short)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import budgetspan


def test_every_exported_name_resolves_to_its_module_object() -> None:
    for name in budgetspan.__all__:
        value = getattr(budgetspan, name)
        if name == "__version__":
            continue
        module, attr = budgetspan._LAZY[name]
        assert value is getattr(importlib.import_module(module), attr), name
    assert set(budgetspan._LAZY) | {"__version__"} == set(budgetspan.__all__)
    assert set(budgetspan.__all__) <= set(dir(budgetspan))


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        budgetspan.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("no AttributeError")


def test_import_and_report_command_stay_light() -> None:
    code = (
        "import sys, budgetspan, budgetspan.cli\n"
        "from budgetspan.report import render\n"
        "render.add_arguments\n"
        "heavy = [m for m in ('opentelemetry.sdk.trace', 'budgetspan.calls.call', 'budgetspan.demo.runner',"
        " 'redis', 'openai') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from budgetspan import cli

    parser = cli.build_parser("report")
    assert parser.parse_args(["report", "x.jsonl"]).command == "report"
    full = cli.build_parser()
    assert full.parse_args(["jobs", "watch", "j1"]).job == "j1"
