"""Hosts: the core applied to rotel's span objects and to plain dicts.

rotel hands its Python processor one ``ResourceSpans`` at a time (before batching) and exports
whatever the objects hold when the call returns, so the edits are made in place. Reading a
span's attributes turns each into a Python object, so a span is first checked by its keys
alone (``is_candidate``): a span with no GenAI-looking attribute costs only that check,
and, when it is a trace's root, the end of its trace's run.

Every span is handled under its own try/except: an error leaves that span as it came, and the
rest of the batch is still processed. Nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from budgetspan import attributes as A
from budgetspan.collector.content import is_content, is_event_content
from budgetspan.collector.core import Edit, SpanFacts, Tier
from budgetspan.collector.normalise import is_candidate

_ERROR = 2  # OTLP Status.code STATUS_CODE_ERROR


# --- rotel ---------------------------------------------------------------------------------
def rotel_resource_spans(tier: Tier, resource_spans: Any) -> None:
    """Process one rotel ``ResourceSpans`` in place."""
    service = "unknown"
    try:
        for kv in resource_spans.resource.attributes:
            if kv.key == A.SERVICE_NAME:
                service = str(kv.value.value)
                break
    except Exception:
        tier.internal_error("collector.resource")
    plain = tier.options.plain_scopes
    for scope_spans in resource_spans.scope_spans:
        if plain and _scope_name(tier, scope_spans) in plain:
            _rotel_plain_scope(tier, scope_spans.spans)
            continue
        for span in scope_spans.spans:
            try:
                _rotel_span(tier, span, service)
            except Exception:
                tier.internal_error("collector.rotel_span")


def _scope_name(tier: Tier, scope_spans: Any) -> str | None:
    try:
        scope = scope_spans.scope
        return None if scope is None else str(scope.name)
    except Exception:
        tier.internal_error("collector.scope")
        return None


def _rotel_plain_scope(tier: Tier, spans: Any) -> None:
    """Spans of a scope the operator declared free of GenAI data (``--plain-scope``): their
    attributes are never read, which is what makes a plain span cheap. Reading a span's keys makes
    rotel build a Python object per attribute and convert them back, about 40k CPU instructions
    (4 µs) per span; skipping them costs about 3.4k (``bench/bench_collector.py --instructions``,
    the opt-in row). A root still ends its trace's run."""
    for span in spans:
        try:
            if not span.parent_span_id:
                tier.plain_span(span.trace_id.hex(), True, span.end_time_unix_nano, _rotel_error(span))
        except Exception:
            tier.internal_error("collector.rotel_span")


def _rotel_span(tier: Tier, span: Any, service: str) -> None:
    attributes = span.attributes
    kvs = list(attributes)  # each KeyValue made once: every read through rotel is a pyo3 call
    keys = [kv.key for kv in kvs]
    reads = _VALUE_READS.get(key_tuple := tuple(keys), ())  # () never stored: see _value_reads
    if reads == ():
        reads = _value_reads(key_tuple)
    if reads is None:
        if not span.parent_span_id:
            tier.plain_span(span.trace_id.hex(), True, span.end_time_unix_nano, _rotel_error(span))
        return
    status = span.status  # (``_rotel_error``, inline)
    error = status is not None and status.code == _ERROR
    if reads is _ALL:
        attrs = dict(zip(keys, [kv.value.value for kv in kvs], strict=True))
    else:
        attrs = dict(
            zip(keys, [kv.value.value if r else None for kv, r in zip(kvs, reads, strict=True)], strict=True)
        )
    facts = SpanFacts(
        span.trace_id.hex(),
        span.parent_span_id.hex(),
        span.start_time_unix_nano,
        span.end_time_unix_nano,
        error,
        service,
    )
    edit = tier.process(facts, attrs)
    if edit is not None:
        _rotel_apply(span, attributes, keys, attrs, edit)


#: ``_value_reads``: every value is read. Compared by identity, so typed as a variable-length
#: tuple: compiled with mypyc, a ``tuple[bool]`` is an unboxed value boxed anew at each read.
_ALL: tuple[bool, ...] = (True,)
_VALUE_READS: dict[tuple[str, ...], tuple[bool, ...] | None] = {}


def _value_reads(keys: tuple[str, ...]) -> tuple[bool, ...] | None:
    """Whose values of a span's attributes the core may read, by their keys (cached by key tuple:
    spans of one instrumentation share them). None: no key is a candidate (``is_candidate``),
    the span is plain (a span with no attribute too: ``()`` is never stored). The values of message content (removed, never read) and of keys under
    no candidate prefix (never read) are not fetched: each is two pyo3 calls and an object,
    ~3k CPU instructions (bench/README.md, collector section, fourth pass)."""
    if not any(map(is_candidate, keys)):
        reads = None
    else:
        flags = tuple(is_candidate(k) and not is_content(k) for k in keys)
        reads = _ALL if all(flags) else flags
    if len(_VALUE_READS) >= 4096:
        _VALUE_READS.clear()
    _VALUE_READS[keys] = reads
    return reads


def _rotel_error(span: Any) -> bool:
    """rotel gives ``status`` as None when the sender set none (an OTLP span's default)."""
    status = span.status
    return status is not None and status.code == _ERROR


def _rotel_apply(span: Any, attributes: Any, keys: list[str], attrs: dict[str, Any], edit: Edit) -> None:
    """Edits in place, one pyo3 call per attribute removed or added; the keys as read (in order)
    say where the attributes to remove are, so the list is not read again."""
    gone = edit.set.keys() & attrs.keys()
    if edit.remove:
        gone.update(edit.remove)
    if gone:
        for i in range(len(keys) - 1, -1, -1):
            if keys[i] in gone:
                del attributes[i]
    new_value = _CONSTRUCTORS or _rotel_constructors()
    for key, value in edit.set.items():
        make = new_value.get(type(value))
        attributes.append(make(key, value) if make is not None else new_value[str](key, str(value)))
    if edit.redact_events:
        for event in span.events:
            ev_attrs = event.attributes
            name = event.name
            for i in range(len(ev_attrs) - 1, -1, -1):
                if is_event_content(name, ev_attrs[i].key):
                    del ev_attrs[i]


_CONSTRUCTORS: dict[type, Any] = {}


def _rotel_constructors() -> dict[type, Any]:
    """rotel's ``KeyValue`` constructors by Python type, looked up once (``rotel_sdk`` exists only
    inside rotel). Measured with the import and the isinstance chain per span before it:
    ``bench_collector.py``'s GenAI span fell from ~40 to ~36 µs of thread CPU (load ~10)."""
    from rotel_sdk.open_telemetry.common.v1 import KeyValue

    _CONSTRUCTORS.update(
        {
            bool: KeyValue.new_bool_value,
            int: KeyValue.new_int_value,
            float: KeyValue.new_double_value,
            str: KeyValue.new_string_value,
        }
    )
    return _CONSTRUCTORS


# --- plain dicts ---------------------------------------------------------------------------
def dict_spans(tier: Tier, service: str, spans: Iterable[MutableMapping[str, Any]]) -> None:
    """Process plain-dict spans in place: ``trace_id``/``span_id``/``parent_span_id`` (hex),
    ``name``, ``start_time_unix_nano``, ``end_time_unix_nano``, ``status_code`` (0, 1, 2),
    ``attributes`` (a dict) and ``events`` (``name``, ``attributes``)."""
    for span in spans:
        try:
            _dict_span(tier, service, span)
        except Exception:
            tier.internal_error("collector.dict_span")


def _dict_span(tier: Tier, service: str, span: MutableMapping[str, Any]) -> None:
    attrs: dict[str, Any] = span.setdefault("attributes", {})
    error = span.get("status_code") == _ERROR
    parent = span.get("parent_span_id") or ""
    if not any(map(is_candidate, attrs)):
        tier.plain_span(span["trace_id"], not parent, int(span.get("end_time_unix_nano", 0)), error)
        return
    facts = SpanFacts(
        span["trace_id"],
        parent,
        int(span.get("start_time_unix_nano", 0)),
        int(span.get("end_time_unix_nano", 0)),
        error,
        service,
    )
    edit = tier.process(facts, attrs)
    if edit is None:
        return
    for key in edit.remove:
        attrs.pop(key, None)
    attrs.update(edit.set)
    if edit.redact_events:
        for event in span.get("events", []):
            ev = event.get("attributes", {})
            name = event.get("name")
            event["attributes"] = {k: v for k, v in ev.items() if not is_event_content(name, k)}
