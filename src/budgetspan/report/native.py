"""The report's reading and analysis, compiled when a build of the current sources is there.

``native_build`` compiles copies of the hot modules (``HOT``) with mypyc into
``budgetspan/report/_native/`` under their own names, stamped with a hash of every source file
they were made from. ``modules()`` returns the compiled ``load`` and ``analysis`` only while that
stamp equals the hash of the files on disk now; otherwise (no build, no compiler, a ``.py`` edited
since, another Python) the pure modules. Same output either way (tests/report/test_native.py).
``BUDGETSPAN_REPORT_PURE=1`` forces the pure modules.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Final

#: Compiled together, in this order; they import only each other and modules outside the report.
HOT: Final = (
    "numbers",
    "otlp",
    "fastread",
    "load",
    "tree",
    "sweep",
    "assemble",
    "run_stats",
    "savings",
    "analysis",
)
NATIVE_DIR: Final = "_native"
PURE_ENV: Final = "BUDGETSPAN_REPORT_PURE"


def source_hash(package: Path, files: tuple[str, ...] | list[str]) -> str:
    """sha256 over the names and bytes of ``files`` (relative to the budgetspan package)."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0")
        h.update((package / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def compiled() -> tuple[ModuleType, ModuleType] | None:
    """The compiled (load, analysis), if built from the sources on disk now; else None."""
    try:
        analysis = importlib.import_module(f"budgetspan.report.{NATIVE_DIR}.analysis")
        load = importlib.import_module(f"budgetspan.report.{NATIVE_DIR}.load")
        package = Path(__file__).resolve().parent.parent
        stamp = source_hash(package, analysis.NATIVE_SOURCES)
    except (ImportError, OSError, AttributeError):  # not built, another Python, a source gone
        return None
    if stamp != analysis.NATIVE_SOURCE_HASH or stamp != load.NATIVE_SOURCE_HASH:
        return None
    return load, analysis


def modules() -> tuple[ModuleType, ModuleType]:
    """(load, analysis): compiled when up to date (see the module's docstring), else pure."""
    if os.environ.get(PURE_ENV) != "1":
        found = compiled()
        if found is not None:
            return found
    from budgetspan.report import analysis, load

    return load, analysis
