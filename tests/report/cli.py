"""Running ``budgetspan report`` in-process, as the command line would, for the report tests."""

from __future__ import annotations

import argparse
import io

from budgetspan.report.render import add_arguments, run_report

S = 1_000_000_000  # one second in nanoseconds, the unit of OTLP timestamps


class _Output(io.StringIO):
    """Captured output that is not a terminal (no colour, no width guessing)."""

    def isatty(self) -> bool:
        return False


def report(*argv: str) -> tuple[int, str, str]:
    """``budgetspan report ARGV...``: the exit status, stdout and stderr."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    out, err = _Output(), _Output()
    code = run_report(p.parse_args(list(argv)), out, err)
    return code, out.getvalue(), err.getvalue()
