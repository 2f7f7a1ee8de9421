"""The Rust reader (``report/rsread/``) against the Python reading, line by fuzzed line (fuzz17).

``bench/fuzz_rsread.py`` makes the lines (the demo's traces mutated: bytes flipped, cut, keys
doubled, deep nesting, odd numbers and escapes, attribute values of every OTLP type) and compares
the two readings exactly (values, types, attribute order); here a fixed seed and a few thousand
lines, the long run is the bench script (bench/README.md). Each defect found has its test here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetspan.report import fastread, rsnative
from budgetspan.report.otlp import BadLine, Keep
from tests.report.cli import report
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


def _both_or_bad(raw: bytes, keep: Keep) -> tuple[Any, Any]:
    try:
        return _both(raw, keep)
    except BadLine as e:  # Python names the line: Rust must have refused it
        fastread.use_rust(False)
        return RUST.read_line(raw, fastread._rs_state(keep)), f"BadLine: {e}"


def test_the_operation_is_found_when_the_kept_keys_are_not_the_module_constants() -> None:
    """Defect: the operation's key was compared by identity with ``A.GEN_AI_OPERATION_NAME``; a
    ``Keep`` whose keys are equal strings made at run time got ``operation=None`` from Rust."""
    keep = fuzz_rsread.KEEPS[2]
    got, want = _both(line(*a_run("r")), keep)
    assert got is not None and got == want


def test_fuzzed_lines_read_the_same_or_refused() -> None:
    cases, read, problems = fuzz_rsread.run_cases(seed=17, count=3000)
    assert cases == 3000 and read > 100  # the reader does read lines, not only refuse them
    assert problems == []


_KEYS = sorted(fuzz_rsread.KEEPS[2].keys | {"budgetspan.limit.x", "budgetspan.usage.y", "x1", "other"})
_SCALARS = st.one_of(
    st.fixed_dictionaries(
        {"stringValue": st.one_of(st.text(max_size=80), st.sampled_from(["chat", "invoke_agent", "wf"]))}
    ),
    st.fixed_dictionaries({"boolValue": st.booleans()}),
    st.fixed_dictionaries({"intValue": st.one_of(st.integers(), st.text("0123456789-+ _", max_size=22))}),
    st.fixed_dictionaries(
        {"doubleValue": st.one_of(st.floats(), st.integers(), st.sampled_from(["NaN", "Infinity", "1.5"]))}
    ),
    st.fixed_dictionaries({"bytesValue": st.text(max_size=8)}),
    st.just({}),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.fixed_dictionaries({"arrayValue": st.fixed_dictionaries({"values": st.lists(inner, max_size=3)})}),
        st.fixed_dictionaries(
            {
                "kvlistValue": st.fixed_dictionaries(
                    {
                        "values": st.lists(
                            st.fixed_dictionaries({"key": st.text(max_size=4), "value": inner}), max_size=3
                        )
                    }
                )
            }
        ),
        st.tuples(inner, inner).map(lambda p: {**p[0], **p[1]}),  # two fields in one value
    ),
    max_leaves=6,
)
_KVS = st.lists(st.fixed_dictionaries({"key": st.sampled_from(_KEYS), "value": _VALUES}), max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(kvs=_KVS, keep=st.sampled_from(fuzz_rsread.KEEPS), span=st.integers(0, 2), ascii=st.booleans())
def test_hypothesis_attribute_values_read_the_same_or_refused(
    kvs: list[Any], keep: Keep, span: int, ascii: bool
) -> None:
    data = json.loads(line(*a_run("r")))
    data["resourceSpans"][0]["scopeSpans"][0]["spans"][span]["attributes"][1:1] = kvs
    raw = json.dumps(data, ensure_ascii=ascii).encode("utf-8", "surrogatepass")
    got, want = _both_or_bad(raw, keep)
    assert got is None or got == want


def test_a_report_of_fuzzed_lines_is_the_same_bytes_with_and_without_rust(tmp_path: Path) -> None:
    """``report()`` runs the report compiled (the Rust reader in front) and pure (no Rust) and
    asserts the same exit status, stdout and stderr: here on the demo's lines and 2,000 fuzzed
    ones (bad lines named, odd values read) in one file."""
    import random

    seeds = fuzz_rsread.seed_lines()
    rng = random.Random(1717)
    fuzzed = [fuzz_rsread.case(rng, seeds).replace(b"\n", b" ").replace(b"\r", b" ") for _ in range(2000)]
    path = tmp_path / "fuzzed.jsonl"
    path.write_bytes(b"".join(x + b"\n" for x in [s.encode() for s in seeds] + fuzzed))
    for fmt in ("json", "table"):
        code, out, err = report(str(path), "--format", fmt)
        assert code in (0, 1) and out, err


@pytest.mark.parametrize(
    "literal", ["-0", "0", "-0.0", "-0e0", "7", "-7", "123456789012345678", "-99999999999999999"]
)
def test_a_double_given_as_an_integer_literal_is_that_integer_as_a_float(literal: str) -> None:
    """Defect: ``"doubleValue": -0`` read as -0.0 by Rust; msgspec reads the integer 0, then 0.0."""
    text = line(*a_run("r")).replace(
        '"attributes": [',
        '"attributes": [{"key": "budgetspan.cost.unpriced", "value": {"doubleValue": ' + literal + "}}, ",
        1,
    )
    got, want = _both(text, fuzz_rsread.KEEPS[0])
    assert got is not None and got == want


class _InterruptedOnce:
    """Event names whose first lookup is interrupted, as a Ctrl-C landing there would be."""

    def __init__(self) -> None:
        self.fired = False

    def __contains__(self, name: object) -> bool:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return False


def test_a_ctrl_c_in_the_events_python_call_is_raised_not_swallowed() -> None:
    """Defect: the Rust reader cleared any error of the events' Python call, a KeyboardInterrupt
    too, and handed the line to the Python reading: the Ctrl-C was lost."""
    base = fuzz_rsread.KEEPS[0]
    keep = Keep(base.keys, _InterruptedOnce(), base.prefixes, base.prefixes_on)  # type: ignore[arg-type]
    text = line(*a_run("r")).replace('"attributes"', '"events": [{"name": "x"}], "attributes"', 1).encode()
    fastread.use_rust(True)
    try:
        with pytest.raises(KeyboardInterrupt):
            fastread.parse_line_fast(text, keep)
    finally:
        fastread.use_rust(False)
