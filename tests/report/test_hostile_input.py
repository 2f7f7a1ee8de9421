"""`budgetspan report` on hostile trace files: every bad line is named and skipped, never a crash;
text from spans never reaches the terminal raw."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetspan import attributes as A
from budgetspan.report.analysis import REPORT_KEEP, analyze_stream
from budgetspan.report.load import SpanReader, load_files
from budgetspan.report.otlp import BadLine, SpanRec, parse_line
from tests.report.cli import S, report

TRACE = "5b8efff798038103d269b633813fc60c"


def attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {"key": key, "value": value}
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def span(
    span_id: str, name: str, start: float, end: float, parent: str | None = None, **attrs: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": TRACE,
        "spanId": span_id,
        "name": name,
        "startTimeUnixNano": str(int(start * S)),
        "endTimeUnixNano": str(int(end * S)),
        "attributes": [attr(k.replace("__", "."), v) for k, v in attrs.items()],
    }
    if parent:
        out["parentSpanId"] = parent
    return out


def line(*spans: dict[str, Any]) -> str:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]})


def a_run(run_id: str = "r1", workflow: str = "wf", chat_name: str = "chat m") -> list[dict[str, Any]]:
    """A run: one chat call inside a phase block, then the run span (spans are written as they end)."""
    base = {"budgetspan__run__id": run_id, "budgetspan__workflow": workflow}
    return [
        span(
            f"{run_id}c",
            chat_name,
            1,
            2,
            f"{run_id}p",
            gen_ai__operation__name="chat",
            budgetspan__phase="model_decision",
            gen_ai__usage__cost=0.5,
            **base,
        ),
        span(
            f"{run_id}p",
            "phase model_decision",
            1,
            3,
            f"{run_id}r",
            budgetspan__phase="model_decision",
            **base,
        ),
        span(
            f"{run_id}r",
            f"invoke_agent {workflow}",
            0,
            4,
            gen_ai__operation__name="invoke_agent",
            budgetspan__run__outcome="success",
            **base,
        ),
    ]


def _chat_with(value: dict[str, Any]) -> str:
    """A good run whose chat call carries ``value`` as its input token count."""
    spans = a_run("bad")
    spans[0]["attributes"].append({"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": value})
    return line(*spans)


def _run_span_with(key: str, value: dict[str, Any]) -> str:
    """A good run whose run span carries ``value`` under ``key`` (a limit or usage figure)."""
    spans = a_run("bad")
    spans[2]["attributes"].append({"key": key, "value": value})
    return line(*spans)


HOSTILE = {
    "deep nesting (past the JSON parser's limit)": (
        "[" * 100_000 + "]" * 100_000,
        "not valid JSON (depth limit",
    ),
    "deep nesting (inside the parser's limit, in a span name)": (
        line({**a_run("x")[0], "name": json.loads("[" * 900 + "]" * 900)}),
        "span 1: span name is a list, not a string",
    ),
    "deeply nested attribute value": (
        _chat_with(json.loads('{"kvlistValue":{"values":[{"key":"k","value":' * 50 + "{}" + "}]}}" * 50)),
        "nested deeper than 8 levels",
    ),
    "intValue '12abc'": (_chat_with({"intValue": "12abc"}), "intValue is not an integer (a string)"),
    "a 5,000-digit intValue string": (_chat_with({"intValue": "9" * 5000}), "intValue is not an integer"),
    "a 5,000-digit JSON number": (
        _chat_with({"intValue": 0}).replace('"intValue": 0', '"intValue": ' + "9" * 5000),
        "not valid JSON",
    ),
    "a 5,000-digit timestamp": (
        line({**a_run("x")[0], "startTimeUnixNano": "1" * 5000}),
        "startTimeUnixNano is not an integer",
    ),
    "doubleValue 'x'": (_chat_with({"doubleValue": "x"}), "doubleValue is not a number (a string)"),
    "a run's limit intValue '12abc'": (
        _run_span_with(A.LIMIT_PREFIX + "max_model_calls", {"intValue": "12abc"}),
        "intValue is not an integer (a string)",
    ),
    "a run's usage intValue of 5,000 digits": (
        _run_span_with(A.USAGE_PREFIX + "cost_usd", {"intValue": "9" * 5000}),
        "intValue is not an integer",
    ),
    "a run's usage intValue past 64 bits": (
        _run_span_with(A.USAGE_PREFIX + "steps", {"intValue": "99999999999999999999"}),
        "intValue is out of range",
    ),
    "a run's limit doubleValue 'x'": (
        _run_span_with(A.LIMIT_PREFIX + "max_cost_usd", {"doubleValue": "x"}),
        "doubleValue is not a number (a string)",
    ),
    "spans: 7": (
        json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": 7}]}]}),
        "spans is a number, not a list",
    ),
    "scopeSpans: 'x'": (
        json.dumps({"resourceSpans": [{"scopeSpans": "x"}]}),
        "scopeSpans is a string, not a list",
    ),
    "attributes: {}": (line({**a_run("x")[0], "attributes": {}}), "attributes is an object, not a list"),
    "invalid UTF-8 in a key": (
        b'{"resourceSpans": 7, "\xff": 1}'.decode("latin-1"),
        "resourceSpans is a number",
    ),
    "a lone surrogate": ('{"resourceSpans": [], "k": "\\ud800"}', "not valid JSON"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_each_kind_of_hostile_line_is_named_and_skipped(kind: str, tmp_path: Path) -> None:
    text, reason = HOSTILE[kind]
    path = tmp_path / "traces.jsonl"
    good = [line(*a_run("r1")), line(*a_run("r2"))]
    with open(path, "w", encoding="latin-1" if "UTF-8" in kind else "utf-8", errors="surrogatepass") as f:
        f.write("\n".join([good[0], text, good[1]]) + "\n")
    code, out, err = report(str(path), "--format", "json")
    assert code == 1
    assert f"{path}:2: " in err and reason in err, err
    assert "1 bad line skipped; the report covers the rest." in err
    data = json.loads(out)
    assert sorted(r["run_id"] for r in data["runs"]) == ["r1", "r2"]  # the lines around it are read
    # the in-memory loader (every attribute read) names it the same way
    _, errors = load_files([str(path)])
    assert [(e.line, reason in e.message) for e in errors] == [(2, True)]


# --- arbitrary input ---------------------------------------------------------------------------

SPAN_FIELDS = [
    "traceId",
    "spanId",
    "parentSpanId",
    "name",
    "startTimeUnixNano",
    "endTimeUnixNano",
    "attributes",
    "events",
    "status",
]


OTLP_KEYS = [
    "resourceSpans",
    "scopeSpans",
    "spans",
    *SPAN_FIELDS,
    "code",
    "key",
    "value",
    "values",
    "stringValue",
    "intValue",
    "doubleValue",
    "boolValue",
    "arrayValue",
    "kvlistValue",
    "bytesValue",
    A.RUN_ID,
    A.GEN_AI_OPERATION_NAME,
    A.PHASE,
    A.GEN_AI_USAGE_INPUT_TOKENS,
    A.LIMIT_PREFIX + "max_cost_usd",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["invoke_agent", "chat", "phase x", "12abc", "9" * 30, "NaN", "-5", ""])
)
json_ish = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(OTLP_KEYS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=40,
)


def _otlp_like(spans: list[Any]) -> Any:
    return {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}


def _mutated(field: str, where: int, value: Any) -> str:
    """A good run with one field of one span (or of one attribute's value) replaced."""
    spans = a_run("m")
    target = spans[where % len(spans)]
    if field == "value":
        target["attributes"][where % len(target["attributes"])]["value"] = value
    else:
        target[field] = value
    return line(*spans)


lines = st.one_of(
    st.builds(_mutated, st.sampled_from([*SPAN_FIELDS, "value"]), st.integers(0, 20), json_ish),
    json_ish.map(json.dumps),
    st.lists(json_ish, max_size=4).map(lambda s: json.dumps(_otlp_like(s))),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines, min_size=1, max_size=6))
def test_arbitrary_lines_are_read_or_named_never_an_exception(texts: list[str]) -> None:
    for text in texts:
        for keep in (None, REPORT_KEEP):
            try:
                spans = parse_line(text.encode("utf-8", "surrogatepass"), keep)
            except BadLine as e:
                assert str(e)  # a reason, not an empty message
            else:
                assert all(isinstance(s, SpanRec) for s in spans)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(lines, min_size=1, max_size=8))
def test_the_whole_report_survives_arbitrary_files(texts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.jsonl"
        path.write_bytes(
            "\n".join(t.replace("\n", " ") for t in texts).encode("utf-8", "surrogatepass") + b"\n"
        )
        reader = SpanReader(keep=REPORT_KEEP)
        analysis = analyze_stream(reader.read([str(path)]), window=3, max_in_flight=5)
        assert analysis.spans >= 0
        for e in reader.errors:
            assert str(e).startswith(f"{path}:") and e.line >= 1
        code, out, _ = report(str(path), "--format", "markdown")
        assert code in (0, 1) and out.startswith("# budgetspan report")


# --- text from spans -----------------------------------------------------------------------------

NASTY = "evil\x1b[2J\x1b]0;owned\x07\r\nname\u202e\x9b31m"


def test_control_characters_from_spans_are_escaped_in_table_and_markdown(tmp_path: Path) -> None:
    path = tmp_path / "nasty.jsonl"
    spans = a_run("r\x1b[1m1", workflow=NASTY, chat_name="chat \x1b[31mred")
    path.write_text(line(*spans) + "\n")
    for fmt in ("table", "markdown"):
        code, out, err = report(str(path), "--format", fmt)
        assert code == 0, err
        raw = [c for c in out if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]
        assert raw == [], (fmt, raw)
        assert "evil\\x1b[2J\\x1b]0;owned\\x07\\x0d\\x0aname\\u202e\\x9b31m" in out
        assert "chat \\x1b[31mred" in out
    code, out, _ = report(str(path), "--format", "json")
    data = json.loads(out)  # JSON stays JSON: the names round-trip exactly
    assert data["workflows"][0]["workflow"] == NASTY
    assert data["workflows"][0]["top_by_cost"][0]["name"] == "chat \x1b[31mred"
    assert "\x1b" not in out


def test_bad_line_messages_are_escaped_too(tmp_path: Path) -> None:
    path = tmp_path / "bad\x1b[31m.jsonl"
    path.write_text('{"resourceSpans": 7}\n')
    code, _, err = report(str(path))
    assert code == 1
    assert "\x1b" not in err and "bad\\x1b[31m.jsonl:1: resourceSpans is a number" in err


def test_run_span_limits_and_usage_read_the_same_by_both_readings() -> None:
    """The fast reading of a run span's ``budgetspan.limit.*``/``usage.*`` numbers (decimal
    ``intValue`` strings and ``doubleValue`` floats read in place) gives what the checked reading
    gives, also for the values it hands over (a number as a JSON number, a bool, text, 2**63)."""
    values: dict[str, dict[str, Any]] = {
        A.LIMIT_PREFIX + "max_model_calls": {"intValue": "12"},
        A.LIMIT_PREFIX + "max_cost_usd": {"doubleValue": 0.25},
        A.LIMIT_PREFIX + "max_wall_clock_s": {"doubleValue": 3},
        A.USAGE_PREFIX + "model_calls": {"intValue": 7},
        A.USAGE_PREFIX + "steps": {"intValue": str(2**63)},
        A.USAGE_PREFIX + "cost_usd": {"stringValue": "0.5"},
        A.USAGE_PREFIX + "retries": {"boolValue": True},
        A.USAGE_PREFIX + "tool_calls": {"intValue": "-3"},
    }
    spans = a_run("r")
    spans[2]["attributes"] += [{"key": k, "value": v} for k, v in values.items()]
    text = line(*spans)
    fast = {s.span_id: s.attrs for s in parse_line(text, REPORT_KEEP)}
    checked = {s.span_id: s.attrs for s in parse_line(text)}
    run_attrs = fast["rr"]
    assert {k: run_attrs[k] for k in values} == {k: checked["rr"][k] for k in values}
    assert run_attrs[A.LIMIT_PREFIX + "max_model_calls"] == 12
    assert type(run_attrs[A.LIMIT_PREFIX + "max_wall_clock_s"]) is float
    assert run_attrs[A.USAGE_PREFIX + "steps"] == 2**63
    run = analyze_stream([parse_line(text, REPORT_KEEP)]).runs[0]
    assert run.limits == {"max_model_calls": 12.0, "max_cost_usd": 0.25, "max_wall_clock_s": 3.0}
    assert run.usage == {"model_calls": 7.0, "steps": float(2**63), "tool_calls": -3.0}


def test_a_line_longer_than_the_bound_is_named_and_skipped_without_holding_it(tmp_path: Path) -> None:
    """A file with no newline for gigabytes (a disk image, a 2 GB line): the whole line was read
    into memory first (1 GB line: 2.0 GB resident). Past ``max_line_bytes`` the line is named and
    skipped while being read in pieces; the lines after it keep their numbers."""
    path = tmp_path / "long.jsonl"
    good = line(*a_run("after"))
    with path.open("wb") as f:
        f.write(line(*a_run("before")).encode() + b"\n")
        f.write(b"x" * 50_000 + b"\n")  # over the bound below
        f.write(b"{" * 30_000 + b"\r\n")  # over it too, CRLF
        f.write(good.encode() + b"\n")
        f.write(b"y" * 40_000)  # over it, the last line, without a newline
    reader = SpanReader(keep=REPORT_KEEP, max_line_bytes=len(good) + 10)
    runs = {s.attrs.get(A.RUN_ID) for batch in reader.read([str(path)]) for s in batch}
    assert runs == {"before", "after"}
    assert [(e.line, e.message) for e in reader.errors] == [
        (n, f"line longer than {len(good) + 10:,} bytes; skipped") for n in (2, 3, 5)
    ]
    assert reader.max_line_bytes == len(good) + 10
    assert SpanReader().max_line_bytes >= 64 * 2**20  # the default: room for a large export batch


@pytest.mark.parametrize("cost", [-5.0, 1e308])
def test_a_negative_or_absurd_cost_on_a_span_is_not_summed(tmp_path: Path, cost: float) -> None:
    path = tmp_path / "negative.jsonl"
    lines = []
    for name in ("neg", "neg2"):  # two 1e308 would sum to $inf
        spans = a_run(name)
        for a in spans[0]["attributes"]:
            if a["key"] == A.GEN_AI_USAGE_COST:
                a["value"] = {"doubleValue": cost}
        lines.append(line(*spans))
    path.write_text("\n".join(lines) + "\n")
    code, out, _ = report(str(path), "--format", "json")
    (workflow,) = json.loads(out)["workflows"]
    assert code == 0 and workflow["total_cost_usd"] == 0 and workflow["unpriced_calls"] == 2
