"""The Rust reader (``report/rsread/``) against the Python reading, line by fuzzed line (fuzz17).

``bench/fuzz_rsread.py`` makes the lines (the demo's traces mutated: bytes flipped, cut, keys
doubled, deep nesting, odd numbers and escapes, attribute values of every OTLP type) and compares
the two readings exactly (values, types, attribute order); here a fixed seed and a few thousand
lines, the long run is the bench script (bench/README.md). Each defect found has its test here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from budgetspan.report import fastread, rsnative
from budgetspan.report.otlp import Keep
from tests.report.test_hostile_input import a_run, line

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"
sys.path.insert(0, str(BENCH))
try:
    import fuzz_rsread  # type: ignore[import-not-found]
finally:
    sys.path.remove(str(BENCH))

RUST: Any = rsnative.reader()
pytestmark = pytest.mark.skipif(RUST is None, reason="the Rust reader is not built")


def _both(text: str | bytes, keep: Keep) -> tuple[Any, Any]:
    raw = text if isinstance(text, bytes) else text.encode()
    fastread.use_rust(False)
    got = RUST.read_line(raw, fastread._rs_state(keep))
    return (None if got is None else fuzz_rsread.spans_exact(got)), fuzz_rsread.spans_exact(
        fastread.parse_line_fast(raw, keep)
    )


def test_the_operation_is_found_when_the_kept_keys_are_not_the_module_constants() -> None:
    """Defect: the operation's key was compared by identity with ``A.GEN_AI_OPERATION_NAME``; a
    ``Keep`` whose keys are equal strings made at run time got ``operation=None`` from Rust."""
    keep = fuzz_rsread.ODD_KEEP
    got, want = _both(line(*a_run("r")), keep)
    assert got is not None and got == want


def test_fuzzed_lines_read_the_same_or_refused() -> None:
    cases, read, problems = fuzz_rsread.run_cases(seed=17, count=3000)
    assert cases == 3000 and read > 100  # the reader does read lines, not only refuse them
    assert problems == []
