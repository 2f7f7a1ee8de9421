"""The part of an OTLP JSON line the report reads, as msgspec structs (``fastread`` decodes into them).

Kept apart from ``fastread``: msgspec reads a struct's field types from its annotations, which a
module compiled by mypyc (``native``) does not keep, so the structs stay in this pure module.
"""

from __future__ import annotations

from msgspec import Raw, Struct

NONE = Raw()  # a field absent from the line


class Value(Struct, gc=False):
    """An OTLP AnyValue. A field absent is None (a default msgspec does not check); a field given
    as ``null`` is a type error, so the line is read again (and named) by ``otlp``."""

    stringValue: str = None  # type: ignore[assignment]
    boolValue: bool = None  # type: ignore[assignment]
    intValue: int | str = None  # type: ignore[assignment]
    doubleValue: float | str = None  # type: ignore[assignment]


class KV(Struct, gc=False):
    key: str
    value: Value = None  # type: ignore[assignment]  # absent: read again (None has no fields)


class Status(Struct, gc=False):
    code: int | str | None = None


class Span(Struct, gc=False):
    traceId: str
    spanId: str
    name: str
    startTimeUnixNano: str
    endTimeUnixNano: str
    parentSpanId: str | None = None
    attributes: list[KV] | None = None
    status: Status | None = None
    events: Raw = NONE


class Scope(Struct, gc=False):
    spans: list[Span]


class Resource(Struct, gc=False):
    scopeSpans: list[Scope]


class Request(Struct, gc=False):
    resourceSpans: list[Resource]


__all__ = ["KV", "NONE", "Request", "Resource", "Scope", "Span", "Status", "Value"]
