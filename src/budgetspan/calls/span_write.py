"""Writing a call's attributes onto its SDK span: at its start only what a sampler could read,
the rest when the call ends, validated once.

Why: the SDK's ``set_attributes`` checks every value (types, nested sequences, length limits) one
attribute at a time; a call ends with 10 to 15 attributes that budgetspan built itself, of types
the SDK keeps as they are. Writing them straight into the span's attribute dict, under the locks
the SDK takes, saves about 100k CPU instructions per model call (about 15 µs; measured with
``bench/bench_openai_overhead.py --instructions``, budgetspan's overhead with this path and with
``set_attributes``), which is what keeps a call's overhead below the official openai-v2
instrumentation's. ``tests/calls/test_span_write.py`` pins the equivalence with ``set_attributes``.

Equivalent means: the SDK's own span class, not ended, its ``BoundedAttributes`` mutable, with no
value length limit and room for every key, and every value a ``str``, ``bool``, ``int``,
``float`` or a tuple of ``str``. Anything else goes through ``set_attributes``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace

_PLAIN = frozenset((str, bool, int, float, tuple))
_STR = frozenset((str,))
_SDK_SPANS = frozenset(c for c in (sdk_trace.Span, getattr(sdk_trace, "_Span", None)) if isinstance(c, type))


def write_end_attributes(span: Any, attributes: Mapping[str, Any]) -> None:
    """``span.set_attributes(attributes)`` for the attributes of an ending call (see the module)."""
    if not (type(span) in _SDK_SPANS and _plain(attributes) and _write(span, attributes)):
        span.set_attributes(attributes)


def _plain(attributes: Mapping[str, Any]) -> bool:
    kinds = set(map(type, attributes.values()))
    if not kinds <= _PLAIN:
        return False
    if tuple in kinds:
        for value in attributes.values():
            if type(value) is tuple and not set(map(type, value)) <= _STR:
                return False
    return set(map(type, attributes)) <= _STR and "" not in attributes


def _write(span: Any, attributes: Mapping[str, Any]) -> bool:
    try:
        with span._lock:
            bounded = span._attributes
            if (
                span._end_time is not None
                or type(bounded) is not BoundedAttributes
                or bounded._immutable
                or bounded.max_value_len is not None
            ):
                return False
            with bounded._lock:
                values = bounded._dict
                if bounded.maxlen is not None and len(values) + len(attributes) > bounded.maxlen:
                    return False
                values.update(attributes)
        return True
    except AttributeError:  # the SDK's internals moved: the public path
        return False


#: The SDK's stock samplers: they decide on the trace id and the parent, never on attributes.
_STOCK_SAMPLERS = frozenset(("AlwaysOnSampler", "AlwaysOffSampler", "TraceIdRatioBased", "ParentBased"))
_SAMPLER_NAME = re.compile(r"([A-Za-z]+)(?=[{,}]|$)")
_blind_samplers: dict[int, tuple[Any, bool]] = {}


def sampler_reads_attributes(tracer: Any) -> bool:
    """Whether the tracer's sampler could read a new span's attributes (anything but the SDK's
    stock samplers, told apart by their public description). When it cannot, a call's span starts
    without attributes and gets them all in its one write at the end: starting an SDK span with
    attributes costs about 64k CPU instructions per call (~10 µs; ``bench/bench_openai_overhead.py
    --instructions`` with and without), which is what keeps budgetspan below openai-v2."""
    sampler: Any = getattr(tracer, "sampler", None)
    cached = _blind_samplers.get(id(sampler))
    if cached is not None and cached[0] is sampler:
        return not cached[1]
    blind = False
    try:
        if type(sampler).__module__ == "opentelemetry.sdk.trace.sampling":
            names = set(_SAMPLER_NAME.findall(sampler.get_description()))
            blind = bool(names) and names <= _STOCK_SAMPLERS
    except Exception:
        blind = False
    if len(_blind_samplers) > 64:
        _blind_samplers.clear()
    _blind_samplers[id(sampler)] = (sampler, blind)
    return not blind
