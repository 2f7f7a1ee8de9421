"""The report's fast reading of one OTLP JSON line: msgspec decodes it straight into typed structs.

The structs name only the fields the report reads; msgspec skips the rest in C (resource and
scope attributes, ``kind``, ``flags``, links...) and builds no dict per object. What msgspec
hands over is then read as ``otlp``'s fast reading reads a parsed line: the attributes in
``keep`` (and, on run spans, the numbers under ``keep.prefixes``) into a dict per span.

This reading accepts a subset of what ``otlp.parse_request``'s fast reading accepts and gives
the same spans for it. Anything else (a field of another type, a value it does not read in place,
invalid UTF-8, nesting msgspec will not follow, a line that is not JSON) is read again by
``otlp.parse_line``, which reads it or names what is wrong: bad lines are named as before, with
the same message. One difference, on purpose: a field the report never reads is skipped unread,
so a line whose only fault is there (a number past a double's range in ``kind``) is read, where
orjson refused the whole line.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from budgetspan import attributes as A
from budgetspan.report import rsnative
from budgetspan.report.otlp import Keep, SpanRec, _events, _int, parse_line
from budgetspan.report.otlp_schema import NONE as _NONE
from budgetspan.report.otlp_schema import Request

_STATUS_ERROR = 2
_OPERATION, _DUPLICATE, _PHASE = A.GEN_AI_OPERATION_NAME, A.DUPLICATE_CALL, A.PHASE
_MAX_NS = 2**64


_decode = msgspec.json.Decoder(Request).decode
# AttributeError: an attribute without a value (None has no fields)
_FAILED = (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError, AttributeError)


class _ReadAgain(Exception):
    """What this reading does not take in place: ``otlp.parse_line`` reads the line."""


_RS: Any = None  # the Rust reader (``rsread/``) once ``use_rust`` found it built, else None
_RS_STATES: dict[int, tuple[Keep, tuple[Any, ...]]] = {}
_SPANREC_FIELDS = (
    "trace_id",
    "span_id",
    "parent_id",
    "name",
    "start_ns",
    "end_ns",
    "attrs",
    "error",
    "events",
    "operation",
    "is_phase",
)


def use_rust(on: bool) -> bool:
    """Read lines with the Rust reader first (``on`` and built from the sources on disk) or not;
    ``native.modules()`` decides, as it decides compiled or pure. Returns whether it is in use."""
    global _RS
    _RS = rsnative.reader() if on else None
    return _RS is not None


def _rs_state(keep: Keep) -> tuple[Any, ...]:
    """What the Rust reader needs for ``keep``, made once per ``Keep`` (it keeps it for good):
    the kept keys as the report's own str objects, and how to make a ``SpanRec``."""
    found = _RS_STATES.get(id(keep))
    if found is None or found[0] is not keep:

        def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
            return _events(orjson.loads(raw), keep)

        state = (
            tuple(keep.keys),
            keep.prefixes,
            *keep.prefixes_on,
            SpanRec.__new__,  # a compiled SpanRec refuses object.__new__
            (SpanRec,),
            events,
            _SPANREC_FIELDS,
            _OPERATION,
            _DUPLICATE,
            _PHASE,
        )
        found = _RS_STATES[id(keep)] = (keep, state)
    return found[1]


def parse_line_fast(line: bytes, keep: Keep) -> list[SpanRec]:
    """The spans of one line, as ``otlp.parse_line(line, keep)`` gives them. Raises BadLine.
    The Rust reader first when built (it returns None for what it does not read exactly so)."""
    if _RS is not None:
        spans: list[SpanRec] | None = _RS.read_line(line, _rs_state(keep))
        if spans is not None:
            return spans
    try:
        return _spans(_decode(line), keep)
    except (_ReadAgain, *_FAILED):
        return parse_line(line, keep)


def _not_text(v: Any) -> Any:
    """A kept value that is not text: a boolean or a number read in place, else read again."""
    if v.boolValue is not None:
        return v.boolValue
    n = v.intValue
    if n is not None:
        if type(n) is str and 0 < len(n) <= 18 and n.isdigit() and n.isascii():  # < 10**18
            return int(n)
        return _int(n, "intValue")  # checked: range, sign, digits (BadLine: read again)
    d = v.doubleValue
    if type(d) is float:
        return d
    raise _ReadAgain  # a double as text, arrays, key/value lists, bytes, an empty value


def _prefixed(items: Any, prefixes: tuple[str, ...], attrs: dict[str, Any]) -> None:
    """A run span's ``budgetspan.limit.*``/``usage.*`` values (see ``otlp._prefixed_numbers``)."""
    for kv in items:
        key = kv.key
        if key.startswith(prefixes):
            v = kv.value
            t = v.stringValue
            if t is not None:
                attrs[key] = t
                continue
            n = v.intValue  # most limits and usage are counts: read in place, as in ``_spans``
            if type(n) is str and 0 < len(n) <= 18 and n.isdigit() and n.isascii() and v.boolValue is None:
                attrs[key] = int(n)
            else:
                attrs[key] = _not_text(v)


# long: the per-span loop of the report's hot path, kept in one piece (a call per span costs)
def _spans(request: Any, keep: Keep) -> list[SpanRec]:
    keys, prefixes, (on_key, on_value) = keep.keys, keep.prefixes, keep.prefixes_on
    out: list[SpanRec] = []
    append = out.append
    for rs in request.resourceSpans:
        for ss in rs.scopeSpans:
            for s in ss.spans:
                attrs: dict[str, Any] = {}
                items = s.attributes
                if items is not None:
                    for kv in items:
                        key = kv.key
                        if key in keys:
                            v = kv.value
                            t = v.stringValue
                            if t is not None:
                                attrs[key] = t
                            else:
                                n = v.intValue  # a count of tokens, mostly: read in place
                                if (
                                    type(n) is str
                                    and 0 < len(n) <= 18
                                    and n.isdigit()
                                    and n.isascii()
                                    and v.boolValue is None  # a boolean comes first, as in ``otlp``
                                ):
                                    attrs[key] = int(n)
                                else:
                                    attrs[key] = _not_text(v)
                    if prefixes and attrs.get(on_key) == on_value:
                        _prefixed(items, prefixes, attrs)
                trace_id, span_id = s.traceId, s.spanId
                start: str = s.startTimeUnixNano  # typed: compiled, ``isdigit`` is a direct call
                end: str = s.endTimeUnixNano
                if not trace_id or not span_id or len(start) > 20 or len(end) > 20:
                    raise _ReadAgain
                if not (start.isdigit() and end.isdigit() and start.isascii() and end.isascii()):
                    raise _ReadAgain  # ``int`` takes " 7", "+7", "1_000", other scripts' digits
                rec = SpanRec.__new__(SpanRec)  # every field set here; ``SpanRec.__init__`` costs ~3x more
                rec.start_ns, rec.end_ns = int(start), int(end)
                if rec.start_ns < 0 or rec.end_ns < 0 or rec.start_ns >= _MAX_NS or rec.end_ns >= _MAX_NS:
                    raise _ReadAgain
                rec.trace_id, rec.span_id, rec.parent_id = trace_id, span_id, s.parentSpanId or None
                rec.name = name = s.name
                rec.attrs = attrs
                status = s.status
                code = status.code if status is not None else None
                rec.error = code == _STATUS_ERROR or code == "STATUS_CODE_ERROR"
                events = s.events
                rec.events = [] if events is _NONE else _events(orjson.loads(bytes(events)), keep)
                op = attrs.get(_OPERATION)  # as ``SpanRec.__post_init__``
                rec.operation = op = op if type(op) is str and attrs.get(_DUPLICATE) is not True else None
                rec.is_phase = op is None and _PHASE in attrs and name.startswith("phase ")
                append(rec)
    return out


__all__ = ["parse_line_fast", "use_rust"]
