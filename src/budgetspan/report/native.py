"""The report's reading and analysis, compiled when a build of the current sources is there.

``native_build`` compiles copies of the hot modules (``HOT``) with mypyc into
``budgetspan/report/_native/`` under their own names, with the bytes of every source file the
build was made from (the hot modules and every budgetspan module they import) in a stamp file and
in the compiled code. ``modules()`` returns the compiled ``load`` and ``analysis`` only while those
bytes equal the files on disk now (checked before any compiled code is loaded);
otherwise (no build, no compiler, a ``.py`` edited since, another Python) the pure modules. Same
output either way (tests/report/test_native.py). ``BUDGETSPAN_REPORT_PURE=1`` forces the pure
modules. (Compared byte for byte, not hashed: ``hashlib`` and ``pathlib`` alone cost the report's
start-up more than reading the files.)
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Final

#: Compiled together into one library; they import each other and pure modules (results, otlp_schema...).
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
STAMP_FILE: Final = "BUILT_FROM"  # in NATIVE_DIR: the source files' names, a newline, their bytes
PURE_ENV: Final = "BUDGETSPAN_REPORT_PURE"


def sources_on_disk(package: str, files: tuple[str, ...] | list[str]) -> bytes:
    """``files`` (relative to the budgetspan package directory), names and bytes, as one value."""
    parts = []
    for rel in files:
        with open(os.path.join(package, rel), "rb") as f:
            parts += [rel.encode(), b"\0", f.read(), b"\0"]
    return b"".join(parts)


def compiled() -> tuple[ModuleType, ModuleType] | None:
    """The compiled (load, analysis), if built from the sources on disk now; else None. The stamp
    file is checked before any compiled code is loaded, and the library loaded must carry the
    same stamp (a build interrupted half-way, files copied by hand)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, NATIVE_DIR, STAMP_FILE), "rb") as f:
            names, _, built_from = f.read().partition(b"\n")
        if sources_on_disk(os.path.dirname(here), names.decode().split()) != built_from:
            return None
        analysis = importlib.import_module(f"budgetspan.report.{NATIVE_DIR}.analysis")
        load = importlib.import_module(f"budgetspan.report.{NATIVE_DIR}.load")
    except (ImportError, OSError, UnicodeDecodeError):  # not built, another Python, a source gone
        return None
    # one stamp for both: every module's code is in the build's one library (``core__mypyc``)
    return (load, analysis) if getattr(analysis, "NATIVE_SOURCE_BYTES", None) == built_from else None


def modules() -> tuple[ModuleType, ModuleType]:
    """(load, analysis): compiled when up to date (see the module's docstring), else pure; their
    reading uses the Rust reader when it is built and up to date (``rsnative``), unless pure."""
    pure = os.environ.get(PURE_ENV) == "1"
    found = None if pure else compiled()
    if found is None:
        from budgetspan.report import analysis, fastread, load

        fastread.use_rust(not pure)
        return load, analysis
    importlib.import_module(f"budgetspan.report.{NATIVE_DIR}.fastread").use_rust(True)
    return found
