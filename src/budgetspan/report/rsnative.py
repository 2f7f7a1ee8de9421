"""The report's Rust reader (``rsread/``), loaded only when built from the Rust sources on disk.

``rsread_build`` compiles ``rsread/lib.rs`` (with ``rustc`` alone: no crates) into
``_native/_rsread<suffix>`` and writes the sources' bytes next to it (``STAMP_FILE``); the library
carries the same bytes (``_rsread.source()``). ``reader()`` returns the module only while both equal
the files on disk now (the stamp is checked before the library is loaded); otherwise (no build, no
toolchain, a ``.rs`` edited since) None, and ``fastread`` reads every line in Python.
``BUDGETSPAN_REPORT_PURE=1`` turns it off too. What it reads is exactly what ``fastread`` reads;
anything else it hands back (None) and the Python reading reads or names the line.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Final

SOURCES: Final = (
    "lib.rs",
    "ffi.rs",
    "json.rs",
    "span.rs",
    "records.rs",
    "config.rs",
)  # in ``lib.rs``'s ``SOURCE`` order
CRATE_DIR: Final = "rsread"
NATIVE_DIR: Final = "_native"  # as ``native.NATIVE_DIR`` (not imported: the report's start-up)
MODULE: Final = "_rsread"
STAMP_FILE: Final = "BUILT_FROM_RUST"
PURE_ENV: Final = "BUDGETSPAN_REPORT_PURE"


def sources_on_disk(here: str) -> bytes:
    """The Rust sources' bytes, joined as the library's ``source()`` joins them."""
    parts = []
    for name in SOURCES:
        with open(os.path.join(here, CRATE_DIR, name), "rb") as f:
            parts.append(f.read())
    return b"\0".join(parts)


def reader() -> Any:
    """The Rust reader module if built from the sources on disk now, else None."""
    if os.environ.get(PURE_ENV) == "1":
        return None
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, NATIVE_DIR, STAMP_FILE), "rb") as f:
            stamp = f.read()
        on_disk = sources_on_disk(here)
        if stamp != on_disk:
            return None
        module = importlib.import_module(f"budgetspan.report.{NATIVE_DIR}.{MODULE}")
    except (ImportError, OSError):
        return None
    return module if module.source() == on_disk else None


__all__ = ["reader"]
