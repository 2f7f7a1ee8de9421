"""Running ``budgetspan report`` in-process, as the command line would, for the report tests.

Every call runs the report twice when the compiled modules are built (``report.native``): once
compiled, once pure, and asserts the same exit status and the same bytes on stdout and stderr, so
each report test (hostile lines included) also checks that the two paths agree.
"""

from __future__ import annotations

import argparse
import io
import os

from budgetspan.report import native
from budgetspan.report.render import add_arguments, run_report

S = 1_000_000_000  # one second in nanoseconds, the unit of OTLP timestamps


class _Output(io.StringIO):
    """Captured output that is not a terminal (no colour, no width guessing)."""

    def isatty(self) -> bool:
        return False


def _once(argv: list[str], pure: bool) -> tuple[int, str, str]:
    p = argparse.ArgumentParser()
    add_arguments(p)
    out, err = _Output(), _Output()
    before = os.environ.get(native.PURE_ENV)
    os.environ[native.PURE_ENV] = "1" if pure else "0"
    try:
        code = run_report(p.parse_args(argv), out, err)
    finally:
        if before is None:
            del os.environ[native.PURE_ENV]
        else:
            os.environ[native.PURE_ENV] = before
    return code, out.getvalue(), err.getvalue()


def report(*argv: str) -> tuple[int, str, str]:
    """``budgetspan report ARGV...``: the exit status, stdout and stderr (the same both ways)."""
    pure = _once(list(argv), pure=True)
    if native.compiled() is not None:
        compiled = _once(list(argv), pure=False)
        assert compiled == pure, f"compiled and pure reports differ for {argv}"
    return pure
