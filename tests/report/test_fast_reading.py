"""The report's fast reading (msgspec, ``report/fastread.py``), and the Rust reader in front of it
when built (``report/rsread/``), read every line as the orjson reading (``otlp.parse_line``)
does: the same spans, or the same bad-line message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings

from budgetspan import attributes as A
from budgetspan.report import fastread, rsnative
from budgetspan.report.analysis import REPORT_KEEP
from budgetspan.report.fastread import parse_line_fast
from budgetspan.report.otlp import BadLine, Keep, SpanRec, parse_line
from budgetspan.report.routing_cli import detail_keep
from tests.report.cli import report
from tests.report.test_hostile_input import HOSTILE, a_run, line, lines

RUST = rsnative.reader()  # the Rust reader (report/rsread/) when built: tests/report/test_rust_reader.py


def _fields(s: SpanRec) -> str:
    """Everything a span record holds (repr: NaN equals NaN)."""
    return repr(
        (
            s.trace_id,
            s.span_id,
            s.parent_id,
            s.name,
            s.start_ns,
            s.end_ns,
            sorted(s.attrs.items()),
            s.error,
            s.events,
            s.operation,
            s.is_phase,
        )
    )


def _read(reader: Any, text: bytes, keep: Keep) -> list[str] | str:
    try:
        return [_fields(s) for s in reader(text, keep)]
    except BadLine as e:
        return f"BadLine: {e}"


def _rust_first(text: bytes, keep: Keep) -> list[SpanRec]:
    """The Rust reader's spans, or (None: read again) the Python fast reading's."""
    spans = RUST.read_line(text, fastread._rs_state(keep)) if RUST is not None else None
    return parse_line_fast(text, keep) if spans is None else spans


def assert_same_reading(text: str | bytes) -> None:
    """The msgspec reading, and the Rust reader when built, read ``text`` as the orjson one."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    for keep in (REPORT_KEEP, detail_keep()):
        want = _read(parse_line, raw, keep)
        assert _read(parse_line_fast, raw, keep) == want
        assert _read(_rust_first, raw, keep) == want


def _run_with(*extra: dict[str, Any], span: int = 0, **fields: Any) -> str:
    spans = a_run("r")
    spans[span]["attributes"] += list(extra)
    spans[span].update(fields)
    return line(*spans)


def test_a_good_run_is_read_the_same() -> None:
    text = _run_with()
    assert_same_reading(text)
    assert [s.operation for s in parse_line_fast(text.encode(), REPORT_KEEP)] == [
        "chat",
        None,
        "invoke_agent",
    ]


def test_values_the_fast_reading_hands_over_are_read_the_same() -> None:
    """What the fast reading does not take in place (the line is read again by ``otlp``) and what
    it takes (decimal ints, doubles, booleans, numbers as JSON numbers, events, status)."""
    cases = [
        {"key": A.RUN_REWORK_KINDS, "value": {"arrayValue": {"values": [{"stringValue": "fix"}]}}},
        {"key": A.GEN_AI_USAGE_COST, "value": {"doubleValue": "NaN"}},
        {"key": A.GEN_AI_USAGE_COST, "value": {"doubleValue": 3}},
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": 12}},
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": "-12"}},
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": "0012"}},
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": str(2**63)}},
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": "5", "boolValue": True}},
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": {}},
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS},
        {"key": A.READ_ONLY, "value": {"boolValue": False}},
        {"key": "not.read", "value": {"boolValue": "yes"}},  # a value the report never reads
        {"key": A.PHASE, "value": {"stringValue": None}},
        {"key": A.PHASE, "value": None},
    ]
    for extra in cases:
        assert_same_reading(_run_with(extra))
        assert_same_reading(_run_with(extra, extra, {"key": extra["key"], "value": {"stringValue": "last"}}))
    for fields in (
        {"status": {"code": 2}},
        {"status": {"code": "STATUS_CODE_ERROR"}},
        {"status": 7},
        {"events": [{"name": A.EVENT_WOULD_EXHAUST, "attributes": []}, 5]},
        {"events": None},
        {"startTimeUnixNano": 5},
        {"startTimeUnixNano": " 5"},
        {"parentSpanId": None},
        {"parentSpanId": ""},
        {"traceId": ""},
        {"kind": 1, "flags": 256, "links": [], "droppedAttributesCount": 0},
    ):
        assert_same_reading(_run_with(span=2, **fields))
    run_span_numbers = [
        {"key": A.LIMIT_PREFIX + "max_cost_usd", "value": {"doubleValue": 0.5}},
        {"key": A.USAGE_PREFIX + "steps", "value": {"intValue": "99999999999999999999"}},
        {"key": A.USAGE_PREFIX + "model_calls", "value": {"stringValue": "3"}},
    ]
    for extra in run_span_numbers:
        assert_same_reading(_run_with(extra, span=2))


def test_every_hostile_line_is_named_the_same() -> None:
    for text, _reason in HOSTILE.values():
        assert_same_reading(text)
    assert_same_reading(b'{"resourceSpans": [], "\xff": 1}')  # invalid UTF-8: read as text
    good = line(*a_run("r"))
    for twice in ('"traceId": "b", ', '"attributes": [], ', '"traceId": 5, ', '"startTimeUnixNano": "x", '):
        assert_same_reading(good.replace('"spanId"', twice + '"spanId"'))  # a key given twice: the last


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines)
def test_arbitrary_lines_are_read_the_same(text: str) -> None:
    assert_same_reading(text)


def test_a_fault_in_a_field_the_report_never_reads_is_not_a_bad_line(tmp_path: Path) -> None:
    """The one difference, on purpose: msgspec skips what the report does not read, so a number
    past a double's range in ``kind`` (which orjson refuses) does not make the line bad."""
    spans = a_run("r1")
    text = line(*spans).replace('"name": "invoke_agent wf"', '"kind": 1e400, "name": "invoke_agent wf"')
    assert "1e400" in text
    path = tmp_path / "t.jsonl"
    path.write_text(text + "\n")
    code, out, err = report(str(path), "--format", "json")
    assert code == 0, err
    assert [r["run_id"] for r in json.loads(out)["runs"]] == ["r1"]
