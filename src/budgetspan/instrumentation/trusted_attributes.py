"""Writing attribute values budgetspan built itself onto an SDK span without validating them again.

Why: the SDK's ``set_attributes`` validates every value, recursively over the mapping, and that
costs about a microsecond per attribute, the largest single part of a model call's overhead
(a call span carries about 14). Our values are already what the SDK would keep (``str``, ``int``,
``float``, ``bool``, tuples of ``str``), so, where that is provably equivalent, they go straight
into the span's attribute dict under the same locks the SDK takes.

Equivalent means: an SDK ``Span`` not yet ended, its ``BoundedAttributes`` mutable, with no value
length limit and room for every new key (no eviction), and each value of a kept type. Anything
else (another span class, limits set, an SDK whose internals moved) goes through
``set_attributes``, so the result is never different, only cheaper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import export as sdk_export
from opentelemetry.sdk.trace import sampling

_KEPT = frozenset((str, int, float, bool))  # kept as they are by the SDK (NaN included)
_KEPT_OR_TUPLE = _KEPT | {tuple}
_STR = frozenset((str,))
_IS_TUPLE = tuple.__instancecheck__
# The SDK's default active span processor: it calls each processor's on_start in turn, on the thread
# that starts the span.
_SEQUENTIAL_PROCESSORS = getattr(sdk_trace, "SynchronousMultiSpanProcessor", None)
# The SDK's span classes exactly (a subclass may override set_attributes): tracers make ``_Span``.
_SDK_SPANS = frozenset(c for c in (sdk_trace.Span, getattr(sdk_trace, "_Span", None)) if isinstance(c, type))


def set_trusted_attributes(
    span: Any, attributes: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> None:
    """``span.set_attributes(attributes)``, without re-validation where that changes nothing.

    ``defaults`` are written first and only where the span has no value yet: attributes prepared
    when the call started, which code running during the call may have set on the span since.
    """
    if (
        type(span) in _SDK_SPANS
        and (not defaults or _write(span, defaults, keep=True))
        and _write(span, attributes)
    ):
        return
    if defaults:
        present = getattr(span, "attributes", None) or {}
        missing = {k: v for k, v in defaults.items() if k not in present}
        if missing:
            span.set_attributes(missing)
    span.set_attributes(attributes)


def tag_starting_span(span: Any, key1: str, value1: str, key2: str, value2: str) -> None:
    """``span.set_attributes({key1: value1, key2: value2})`` from a span processor's ``on_start``,
    for two of budgetspan's own attribute names (non-empty str constants) and two str values:
    the caller's to guarantee, not checked again.

    Why a separate path: every foreign GenAI span is tagged with its phase and run here, and the
    SDK's write costs 2 µs. The span is still being started (the SDK calls ``on_start`` before
    ``start_span`` returns it), so it has not ended, and only the span processors can reach it:
    under the SDK's ``SynchronousMultiSpanProcessor`` (the default) they run one after another on
    this thread, so no lock is needed; under any other (``ConcurrentMultiSpanProcessor`` runs them
    at once) the write takes the attribute dict's lock, as the SDK does. Limits are respected by
    falling back: a value length limit, no room for both keys, a key already set.
    """
    if type(span) in _SDK_SPANS:
        try:
            bounded = span._attributes
            if _writable(bounded):
                values = bounded._dict
                maxlen = bounded.maxlen
                lock = None if type(span._span_processor) is _SEQUENTIAL_PROCESSORS else bounded._lock
                if lock is not None:
                    lock.acquire()
                try:
                    if (
                        (maxlen is None or len(values) + 2 <= maxlen)
                        and key1 not in values
                        and key2 not in values
                    ):
                        values[key1] = value1
                        values[key2] = value2
                        return
                finally:
                    if lock is not None:
                        lock.release()
        except AttributeError:
            pass
    span.set_attributes({key1: value1, key2: value2})


def _write(span: Any, attributes: Mapping[str, Any], keep: bool = False) -> bool:
    """Write straight into the SDK's dict; False (nothing written) where that is not equivalent.
    ``keep``: leave the keys the span already has."""
    if not _kept(attributes):
        return False
    try:
        with span._lock:
            if span._end_time is not None:
                return False  # the SDK logs "Setting attribute on ended span"
            bounded = span._attributes
            if not _writable(bounded):
                return False
            with bounded._lock:
                values = bounded._dict
                maxlen = bounded.maxlen
                if maxlen is not None and len(values) + len(attributes) > maxlen:
                    return False
                if values.keys().isdisjoint(attributes):
                    values.update(attributes)  # all new keys: same order as one by one
                elif keep:
                    for key, value in attributes.items():
                        if key not in values:
                            values[key] = value
                else:
                    for key, value in attributes.items():
                        values.pop(key, None)  # a rewritten key moves to the end, as in the SDK
                        values[key] = value
        return True
    except AttributeError:
        return False


def _writable(bounded: Any) -> bool:
    """Whether a value put straight into the span's attribute dict is what the SDK would keep:
    its own ``BoundedAttributes``, still mutable, with no value length limit to apply."""
    return type(bounded) is BoundedAttributes and not bounded._immutable and bounded.max_value_len is None


def _kept(attributes: Mapping[str, Any]) -> bool:
    """Whether the SDK would keep every key and value as it is."""
    # Type checks over all values and keys at C speed (map + set); tuples checked one by one.
    kinds = set(map(type, attributes.values()))
    if not kinds <= _KEPT_OR_TUPLE:
        return False
    if tuple in kinds:  # only the tuples are visited (filter runs in C)
        for value in filter(_IS_TUPLE, attributes.values()):
            if not set(map(type, value)) <= _STR:
                return False
    return not (set(map(type, attributes)) - _STR or "" in attributes)  # (keys the SDK drops)


# Samplers whose decision never reads the span's attributes (the SDK's stock ones).
_ATTRIBUTE_BLIND = frozenset(
    c
    for c in (
        sampling.StaticSampler,
        sampling.TraceIdRatioBased,
        sampling.ParentBased,
        sampling.ParentBasedTraceIdRatio,
        getattr(sampling, "_AlwaysOn", None),
        getattr(sampling, "_AlwaysOff", None),
        getattr(sampling, "_ParentBasedAlwaysOn", None),
        getattr(sampling, "_ParentBasedAlwaysOff", None),
    )
    if isinstance(c, type)
)
_PARENT_BASED_DELEGATES = (
    "_root",
    "_remote_parent_sampled",
    "_remote_parent_not_sampled",
    "_local_parent_sampled",
    "_local_parent_not_sampled",
)
# Span processors whose ``on_start`` never reads a span's attributes (the SDK's exporting ones and
# budgetspan's own, which skip budgetspan's spans); other processors are assumed to read them.
_BLIND_PROCESSORS: set[type] = {sdk_export.SimpleSpanProcessor, sdk_export.BatchSpanProcessor}
_MULTI_PROCESSORS = tuple(
    c
    for c in (
        getattr(sdk_trace, "SynchronousMultiSpanProcessor", None),
        getattr(sdk_trace, "ConcurrentMultiSpanProcessor", None),
    )
    if isinstance(c, type)
)
_blind_cache: dict[int, tuple[Any, Any, Any, bool]] = {}


def register_blind_processor(cls: type) -> None:
    """Declare that ``cls.on_start`` never reads the attributes of budgetspan's spans."""
    _BLIND_PROCESSORS.add(cls)
    _blind_cache.clear()


def attributes_unread_at_start(tracer: Any) -> bool:
    """Whether nothing looks at a new span's attributes before it ends: the tracer's sampler is one
    of the SDK's stock samplers and every span processor is one known not to read them in
    ``on_start``. Then the attributes are written once at the end (a trusted write) instead of
    being validated at creation. Anything else gets them at creation, as usual.
    """
    sampler = getattr(tracer, "sampler", None)
    active = getattr(tracer, "span_processor", None)
    processors = getattr(active, "_span_processors", None)
    cached = _blind_cache.get(id(tracer))
    if cached is not None and cached[0] is tracer and cached[1] is sampler and cached[2] is processors:
        return cached[3]
    blind = (
        type(tracer) is sdk_trace.Tracer
        and sampler is not None
        and _blind(sampler)
        and _processors_blind(active)
    )
    if len(_blind_cache) > 64:
        _blind_cache.clear()
    _blind_cache[id(tracer)] = (tracer, sampler, processors, blind)
    return blind


def _processors_blind(processor: Any) -> bool:
    if isinstance(processor, _MULTI_PROCESSORS):
        return all(_processors_blind(p) for p in getattr(processor, "_span_processors", (None,)))
    return type(processor) in _BLIND_PROCESSORS


def _blind(sampler: Any) -> bool:
    if type(sampler) not in _ATTRIBUTE_BLIND:
        return False
    if isinstance(sampler, sampling.ParentBased):
        return all(_blind(getattr(sampler, name, None)) for name in _PARENT_BASED_DELEGATES)
    return True
