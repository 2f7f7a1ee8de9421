"""Run a script in a fresh interpreter where some libraries import as if they were not installed.

The script's start (``preamble``) hides the libraries, keeps the warnings budgetspan logs and
counts its internal errors; the test reads the JSON the script prints last.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import REPO


def preamble(hidden: list[str]) -> str:
    """Script lines that hide ``hidden`` (``HIDDEN``) and collect ``warnings`` and ``errors``."""
    return f"""
import importlib, json, logging, sys
HIDDEN = {hidden!r}
for name in HIDDEN:
    sys.modules[name] = None  # import fails exactly as if the package were not installed
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        if "spans go nowhere" not in record.getMessage():  # (this script sets up no exporter)
            warnings.append(record.getMessage())
logging.getLogger().addHandler(Keep(level=logging.WARNING))
import budgetspan
errors = []
class CountErrors:
    def on_internal_error(self, where):
        errors.append(where)
budgetspan.add_listener(CountErrors())
"""


def run_script(script: str) -> tuple[Any, str]:
    """The JSON the script prints last, and its stderr (which must show no traceback)."""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr
