"""One line of OTLP JSON lines (an ``ExportTraceServiceRequest`` in OTLP/JSON) as span records.

Anything a file may hold is either read or refused with ``BadLine`` naming what is wrong: the
parser (orjson) refuses invalid UTF-8, numbers beyond a double and nesting deeper than 1,024 levels;
this module checks every field it reads for its type and range before using it (a timestamp is an
unsigned 64-bit integer, an ``intValue`` a 64-bit integer, nested attribute values stop at
``MAX_VALUE_DEPTH``). Parsed values are never passed to ``str()`` or ``repr()``: a list nested a
thousand levels deep would overflow the interpreter's stack there.

``keep`` (a set of attribute keys plus prefixes) reads only the attributes the report uses; the
values of the others are not looked at. ``None`` reads every attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from budgetspan import attributes as A

_STATUS_ERROR = 2  # OTLP Status.code: 0 unset, 1 ok, 2 error
MAX_VALUE_DEPTH = 8  # arrays/kvlists inside attribute values; deeper is a bad line
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1  # intValue is int64; uint64 is accepted too


@dataclass(slots=True, eq=False, repr=False)  # compared by identity; its own short repr
class SpanRec:
    """One span, reduced to what the report needs. ``operation`` (the GenAI operation, or None:
    also for a span that another span of the same call stands for, since two instrumentations
    saw one request and it is counted once) and ``is_phase`` (a ``budgetspan.phase`` block) are
    worked out once, here: the report asks for them many times per span."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    error: bool = False
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    operation: str | None = field(init=False)
    is_phase: bool = field(init=False)

    def __post_init__(self) -> None:
        op = self.attrs.get(A.GEN_AI_OPERATION_NAME)
        self.operation = op if type(op) is str and self.attrs.get(A.DUPLICATE_CALL) is not True else None
        self.is_phase = self.operation is None and A.PHASE in self.attrs and self.name.startswith("phase ")

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    def __repr__(self) -> str:
        return f"SpanRec({self.name!r}, trace={self.trace_id!r}, span={self.span_id!r}, parent={self.parent_id!r})"


class BadLine(ValueError):
    pass


@dataclass(frozen=True)
class Keep:
    """Which attributes (and span events) to read: exact keys, event names, and key prefixes,
    the latter only on spans whose ``prefixes_on`` attribute has the given value (the report reads
    ``budgetspan.limit.*`` and ``budgetspan.usage.*`` on run spans only)."""

    keys: frozenset[str]
    events: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    prefixes_on: tuple[str, str] = ("", "")


def _kind(v: Any) -> str:
    """What a JSON value is, for messages (never its text: it may be huge or deeply nested)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), "null" if v is None else "a number"
    )


def _int(v: Any, what: str, lo: int = _INT_MIN, hi: int = _UINT_MAX) -> int:
    """A 64-bit integer, given as a JSON number or (as OTLP/JSON writes them) a decimal string."""
    if type(v) is int:
        n = v
    elif type(v) is str and len(v) <= 21 and v.isascii() and (v[1:] if v[:1] == "-" else v).isdigit():
        n = int(v)
    else:
        raise BadLine(f"{what} is not an integer ({_kind(v)})")
    if not lo <= n <= hi:
        raise BadLine(f"{what} is out of range")
    return n


def _double(v: Any) -> float:
    if type(v) is float or type(v) is int:
        return float(v)
    if type(v) is str and len(v) <= 64:
        try:
            return float(v)  # "NaN", "Infinity" and "-Infinity" are how OTLP/JSON spells those
        except ValueError:
            pass
    raise BadLine(f"doubleValue is not a number ({_kind(v)})")


def _value(v: Any, depth: int = 0) -> Any:
    """An OTLP/JSON AnyValue as a Python value."""
    if type(v) is not dict:
        raise BadLine(f"attribute value is {_kind(v)}, not an object")
    if "stringValue" in v:
        s = v["stringValue"]
        if type(s) is not str:
            raise BadLine(f"stringValue is {_kind(s)}")
        return s
    if "boolValue" in v:
        b = v["boolValue"]
        if type(b) is not bool:
            raise BadLine(f"boolValue is {_kind(b)}")
        return b
    if "intValue" in v:
        return _int(v["intValue"], "intValue")
    if "doubleValue" in v:
        return _double(v["doubleValue"])
    if "arrayValue" in v or "kvlistValue" in v:
        if depth >= MAX_VALUE_DEPTH:
            raise BadLine(f"attribute value nested deeper than {MAX_VALUE_DEPTH} levels")
        inner = v.get("arrayValue") or v.get("kvlistValue") or {}
        values = inner.get("values", []) if type(inner) is dict else None
        if type(values) is not list:
            raise BadLine("arrayValue/kvlistValue without a list of values")
        if "arrayValue" in v:
            return [_value(x, depth + 1) for x in values]
        return _attrs(values, None, depth + 1)
    if "bytesValue" in v:
        b = v["bytesValue"]
        if type(b) is not str:
            raise BadLine(f"bytesValue is {_kind(b)}")
        return b
    return None  # an empty AnyValue


def _attrs(items: Any, keep: Keep | None, depth: int = 0) -> dict[str, Any]:
    if items is None:
        return {}
    if type(items) is not list:
        raise BadLine(f"attributes is {_kind(items)}, not a list")
    out: dict[str, Any] = {}
    pairs: list[tuple[str, Any]] = []
    for kv in items:
        if type(kv) is not dict:
            raise BadLine(f"attribute is {_kind(kv)}, not an object")
        key = kv.get("key")
        if type(key) is not str:
            raise BadLine("attribute without a key")
        pairs.append((key, kv.get("value", {})))
    for key, value in pairs:
        if keep is None or key in keep.keys:
            out[key] = _named_value(key, value, depth)
    if keep is not None and keep.prefixes and out.get(keep.prefixes_on[0]) == keep.prefixes_on[1]:
        for key, value in pairs:
            if key.startswith(keep.prefixes):
                out[key] = _named_value(key, value, depth)
    return out


def _named_value(key: str, value: Any, depth: int) -> Any:
    try:
        return _value(value, depth)
    except BadLine as e:
        shown = key if len(key) <= 80 else key[:80] + "..."
        raise BadLine(f"attribute {shown!r}: {e}") from None


def _events(raw: Any, keep: Keep | None) -> list[tuple[str, dict[str, Any]]]:
    if raw is None:
        return []
    if type(raw) is not list:
        raise BadLine(f"events is {_kind(raw)}, not a list")
    out = []
    for ev in raw:
        if type(ev) is not dict:
            continue
        name = ev.get("name", "")
        if type(name) is not str:
            raise BadLine(f"event name is {_kind(name)}")
        if keep is None or name in keep.events:
            out.append((name, _attrs(ev.get("attributes"), None)))
    return out


def _text(raw: dict[str, Any], key: str, default: str | None = None) -> str | None:
    v = raw.get(key, default)
    if v is None or type(v) is str:
        return v
    raise BadLine(f"span {key} is {_kind(v)}, not a string")


def parse_span(raw: Any, keep: Keep | None = None) -> SpanRec:
    if type(raw) is not dict:
        raise BadLine(f"a span is {_kind(raw)}, not an object")
    trace_id, span_id = _text(raw, "traceId"), _text(raw, "spanId")
    if not trace_id or not span_id:
        raise BadLine("span without traceId" if not trace_id else "span without spanId")
    if "startTimeUnixNano" not in raw:
        raise BadLine("span without startTimeUnixNano")
    start = _int(raw["startTimeUnixNano"], "startTimeUnixNano", 0)
    end = _int(raw.get("endTimeUnixNano", start), "endTimeUnixNano", 0)
    status = raw.get("status")
    code = status.get("code") if type(status) is dict else None
    return SpanRec(
        trace_id,
        span_id,
        _text(raw, "parentSpanId") or None,
        _text(raw, "name", "") or "",
        start,
        end,
        _attrs(raw.get("attributes"), keep),
        code == _STATUS_ERROR or code == "STATUS_CODE_ERROR",
        _events(raw.get("events"), keep),
    )


def _list(v: Any, what: str) -> list[Any]:
    if v is None:
        return []
    if type(v) is not list:
        raise BadLine(f"{what} is {_kind(v)}, not a list")
    return v


def parse_request(data: Any, keep: Keep | None = None) -> list[SpanRec]:
    """The spans of one OTLP/JSON ``ExportTraceServiceRequest``. Raises BadLine.

    With ``keep``, a fast reading is tried first; whatever it trips on (a field of the wrong type,
    a missing key), the request is read again field by field, checking each, to say what is wrong
    or to read what the fast reading does not expect (absent optional fields, numbers as JSON
    numbers). On well-formed input both readings give the same spans."""
    if keep is not None:
        try:
            return _fast_request(data, keep)
        except (TypeError, KeyError, AttributeError, ValueError):
            pass
    return _checked_request(data, keep)


def _checked_request(data: Any, keep: Keep | None) -> list[SpanRec]:
    if type(data) is not dict or "resourceSpans" not in data:
        raise BadLine("not an OTLP trace export (no resourceSpans)")
    spans: list[SpanRec] = []
    for rs in _list(data["resourceSpans"], "resourceSpans"):
        if type(rs) is not dict:
            raise BadLine(f"resourceSpans entry is {_kind(rs)}, not an object")
        for ss in _list(rs.get("scopeSpans"), "scopeSpans"):
            if type(ss) is not dict:
                raise BadLine(f"scopeSpans entry is {_kind(ss)}, not an object")
            for s in _list(ss.get("spans"), "spans"):
                try:
                    spans.append(parse_span(s, keep))
                except BadLine as e:
                    raise BadLine(f"span {len(spans) + 1}: {e}") from None
    return spans


_MAX_NS = 2**64


def _strict_list(v: Any) -> list[Any]:
    if type(v) is not list:
        raise ValueError  # the checked reading says what it is
    return v


def _prefixed_numbers(items: Any, prefixes: tuple[str, ...], attrs: dict[str, Any]) -> None:
    """The attributes whose key starts with one of ``prefixes`` (a run span's
    ``budgetspan.limit.*`` and ``budgetspan.usage.*``, ~30 numbers), read into ``attrs``: a decimal
    ``intValue`` and a ``doubleValue`` are read here, anything else by ``_value``.

    Measured gain: this and ``run_stats._limits_and_usage`` took ``budgetspan report`` on 100k
    spans (8,232 run spans) from 16,273M to 15,087M instructions (-7%; 10k: 1,938M to 1,819M;
    callgrind, bench/README.md). ``_value`` made 2-3 calls per attribute, 270k calls in all.
    """
    for kv in items:
        key = kv["key"]
        if key.startswith(prefixes):
            v = kv["value"]
            if "intValue" in v:
                n = v["intValue"]
                if type(n) is str and 0 < len(n) <= 18 and n.isascii() and n.isdigit():  # < 10**18
                    attrs[key] = int(n)
                    continue
            elif "doubleValue" in v and type(v["doubleValue"]) is float:
                attrs[key] = v["doubleValue"]
                continue
            attrs[key] = _value(v)


# long: the per-span loop of the report's hot path, kept in one piece (a call per span costs)
def _fast_request(data: Any, keep: Keep) -> list[SpanRec]:
    keys, prefixes, (on_key, on_value) = keep.keys, keep.prefixes, keep.prefixes_on
    spans: list[SpanRec] = []
    append = spans.append
    for rs in _strict_list(data["resourceSpans"]):
        for ss in _strict_list(rs["scopeSpans"]):
            for s in _strict_list(ss["spans"]):
                attrs: dict[str, Any] = {}
                items = s.get("attributes")
                if type(items) is not list:
                    if items is not None:
                        raise ValueError
                    items = ()
                for kv in items:
                    key = kv["key"]
                    if key in keys:
                        v = kv["value"]
                        if "stringValue" in v:  # a test, not try/except: a raised KeyError costs more
                            text = v["stringValue"]
                            if type(text) is not str:
                                raise ValueError
                            attrs[key] = text
                        elif "boolValue" in v and type(v["boolValue"]) is bool:
                            attrs[key] = v["boolValue"]
                        else:
                            attrs[key] = _value(v)
                if prefixes and attrs.get(on_key) == on_value:
                    _prefixed_numbers(items, prefixes, attrs)
                trace_id, span_id, parent_id, name = (
                    s["traceId"],
                    s["spanId"],
                    s.get("parentSpanId"),
                    s["name"],
                )
                if type(trace_id) is not str or type(span_id) is not str or type(name) is not str:
                    raise ValueError
                if not trace_id or not span_id or (parent_id is not None and type(parent_id) is not str):
                    raise ValueError
                start, end = s["startTimeUnixNano"], s["endTimeUnixNano"]
                if type(start) is not str or type(end) is not str or len(start) > 20 or len(end) > 20:
                    raise ValueError
                if not (start.isdigit() and end.isdigit() and start.isascii() and end.isascii()):
                    raise ValueError  # ``int`` takes " 7", "+7", "1_000", other scripts' digits
                start, end = int(start), int(end)
                if start < 0 or end < 0 or start >= _MAX_NS or end >= _MAX_NS:
                    raise ValueError
                status = s.get("status")
                code = status.get("code") if type(status) is dict else None
                events = s.get("events")
                append(
                    SpanRec(
                        trace_id,
                        span_id,
                        parent_id or None,
                        name,
                        start,
                        end,
                        attrs,
                        code == _STATUS_ERROR or code == "STATUS_CODE_ERROR",
                        _events(events, keep) if events is not None else [],
                    )
                )
    return spans


def parse_line(text: str | bytes, keep: Keep | None = None) -> list[SpanRec]:
    """The spans of one line. Raises BadLine, and only BadLine, whatever the line holds."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        if isinstance(text, bytes) and "UTF-8" in e.msg:  # read as text, as a JSON library would
            return parse_line(text.decode("utf-8", errors="replace"), keep)
        raise BadLine(f"not valid JSON ({e.msg} at column {e.colno})") from None
    return parse_request(data, keep)


__all__ = ["BadLine", "Keep", "SpanRec", "parse_line", "parse_request", "parse_span"]
