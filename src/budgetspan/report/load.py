"""Reading spans for ``budgetspan report``: OTLP JSON lines (the Collector file exporter's format).

A bad line is reported with its file and line number and skipped; the rest of the file is still
read. Spans seen twice (the same file given twice, a retried export) are kept once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from budgetspan import attributes as A

_STATUS_ERROR = 2  # OTLP Status.code: 0 unset, 1 ok, 2 error


@dataclass(slots=True)
class SpanRec:
    """One span, reduced to what the report needs."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    error: bool = False
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    @property
    def operation(self) -> str | None:
        """The GenAI operation, or None: also for a span that another span of the same call
        stands for (two instrumentations saw one request: it is counted once)."""
        if self.attrs.get(A.DUPLICATE_CALL) is True:
            return None
        op = self.attrs.get(A.GEN_AI_OPERATION_NAME)
        return op if isinstance(op, str) else None


@dataclass(frozen=True)
class LoadError:
    """A line that could not be read."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class BadLine(ValueError):
    pass


def _value(v: Any) -> Any:
    """An OTLP/JSON AnyValue as a Python value."""
    if not isinstance(v, dict):
        raise BadLine(f"attribute value is not an object: {v!r}")
    if "stringValue" in v:
        return str(v["stringValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        return [_value(x) for x in (v["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in v:
        return _attrs((v["kvlistValue"] or {}).get("values", []))
    if "bytesValue" in v:
        return str(v["bytesValue"])
    return None  # an empty AnyValue


def _attrs(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        raise BadLine("attributes is not a list")
    out: dict[str, Any] = {}
    for kv in items:
        if not isinstance(kv, dict) or "key" not in kv:
            raise BadLine(f"attribute without a key: {kv!r}")
        out[str(kv["key"])] = _value(kv.get("value", {}))
    return out


def _span(raw: Any) -> SpanRec:
    if not isinstance(raw, dict):
        raise BadLine("a span is not an object")
    try:
        trace_id = str(raw["traceId"])
        span_id = str(raw["spanId"])
        start = int(raw["startTimeUnixNano"])
        end = int(raw.get("endTimeUnixNano", start))
    except KeyError as e:
        raise BadLine(f"span without {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise BadLine(f"bad span timestamp ({e})") from None
    status = raw.get("status") or {}
    events = [
        (str(ev.get("name", "")), _attrs(ev.get("attributes", [])))
        for ev in raw.get("events", []) or []
        if isinstance(ev, dict)
    ]
    return SpanRec(
        trace_id=trace_id,
        span_id=span_id,
        parent_id=str(raw["parentSpanId"]) if raw.get("parentSpanId") else None,
        name=str(raw.get("name", "")),
        start_ns=start,
        end_ns=end,
        attrs=_attrs(raw.get("attributes", [])),
        error=isinstance(status, dict) and status.get("code") in (_STATUS_ERROR, "STATUS_CODE_ERROR"),
        events=events,
    )


def parse_request(data: Any) -> list[SpanRec]:
    """The spans of one OTLP/JSON ``ExportTraceServiceRequest``. Raises BadLine."""
    if not isinstance(data, dict) or "resourceSpans" not in data:
        raise BadLine("not an OTLP trace export (no resourceSpans)")
    spans: list[SpanRec] = []
    for rs in data.get("resourceSpans") or []:
        if not isinstance(rs, dict):
            raise BadLine("resourceSpans entry is not an object")
        for ss in rs.get("scopeSpans") or []:
            if not isinstance(ss, dict):
                raise BadLine("scopeSpans entry is not an object")
            spans.extend(_span(s) for s in ss.get("spans") or [])
    return spans


def parse_line(text: str) -> list[SpanRec]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadLine(f"not valid JSON ({e.msg} at column {e.colno})") from None
    return parse_request(data)


class Progress:
    """A one-line progress bar on stderr for long reads; silent unless enabled."""

    def __init__(self, total_bytes: int, enabled: bool, stream: IO[str] | None = None) -> None:
        self.total = max(1, total_bytes)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self._last = 0.0
        self._shown = False

    def advance(self, nbytes: int, spans: int) -> None:
        self.done += nbytes
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        share = min(1.0, self.done / self.total)
        bar = "#" * int(share * 30)
        self.stream.write(f"\rReading spans [{bar:<30}] {share:4.0%}  {spans:,} spans")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def load_lines(
    lines: Iterable[str], path: str, errors: list[LoadError], seen: set[tuple[str, str]]
) -> Iterable[tuple[int, list[SpanRec]]]:
    """Parse lines, yielding (bytes consumed, new spans); bad lines go to ``errors``."""
    for number, line in enumerate(lines, start=1):
        size = len(line)
        if not line.strip():
            yield size, []
            continue
        try:
            spans = parse_line(line)
        except BadLine as e:
            errors.append(LoadError(path, number, str(e)))
            yield size, []
            continue
        fresh = []
        for s in spans:
            key = (s.trace_id, s.span_id)
            if key not in seen:
                seen.add(key)
                fresh.append(s)
        yield size, fresh


def load_files(
    paths: Sequence[str],
    *,
    progress: bool = False,
    progress_stream: IO[str] | None = None,
    on_error: Callable[[LoadError], None] | None = None,
) -> tuple[list[SpanRec], list[LoadError]]:
    """Read every file; returns (spans, errors). A missing file is an error, not an exception."""
    errors: list[LoadError] = []
    spans: list[SpanRec] = []
    seen: set[tuple[str, str]] = set()
    total = 0
    for p in paths:
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    bar = Progress(total, progress, progress_stream)
    try:
        for p in paths:
            before = len(errors)
            try:
                with open(p, encoding="utf-8", errors="replace") as f:
                    for size, new in load_lines(f, p, errors, seen):
                        spans.extend(new)
                        bar.advance(size, len(spans))
            except OSError as e:
                errors.append(LoadError(p, 0, f"cannot read the file ({e.strerror})"))
            if on_error is not None:
                for err in errors[before:]:
                    on_error(err)
    finally:
        bar.close()
    return spans, errors


__all__ = ["BadLine", "LoadError", "SpanRec", "load_files", "parse_line", "parse_request"]
