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
from opentelemetry.sdk.trace import sampling

_KEPT = frozenset((str, int, float, bool))  # kept as they are by the SDK (NaN included)
_KEPT_OR_TUPLE = _KEPT | {tuple}
_STR = frozenset((str,))
_IS_TUPLE = tuple.__instancecheck__
# The SDK's span classes exactly (a subclass may override set_attributes): tracers make ``_Span``.
_SDK_SPANS = frozenset(c for c in (sdk_trace.Span, getattr(sdk_trace, "_Span", None)) if isinstance(c, type))


def set_trusted_attributes(span: Any, attributes: Mapping[str, Any]) -> None:
    """``span.set_attributes(attributes)``, without re-validation where that changes nothing."""
    if type(span) in _SDK_SPANS and _write(span, attributes):
        return
    span.set_attributes(attributes)


def _write(span: Any, attributes: Mapping[str, Any]) -> bool:
    # Type checks over all values and keys at C speed (map + set); tuples checked one by one.
    kinds = set(map(type, attributes.values()))
    if not kinds <= _KEPT_OR_TUPLE:
        return False
    if tuple in kinds:  # only the tuples are visited (filter runs in C)
        for value in filter(_IS_TUPLE, attributes.values()):
            if not set(map(type, value)) <= _STR:
                return False
    if set(map(type, attributes)) - _STR or "" in attributes:
        return False  # a key the SDK would drop (not a non-empty str)
    try:
        with span._lock:
            if span._end_time is not None:
                return False  # the SDK logs "Setting attribute on ended span"
            bounded = span._attributes
            if (
                type(bounded) is not BoundedAttributes
                or bounded._immutable
                or bounded.max_value_len is not None
            ):
                return False
            with bounded._lock:
                values = bounded._dict
                maxlen = bounded.maxlen
                if maxlen is not None and len(values) + len(attributes) > maxlen:
                    return False
                if values.keys().isdisjoint(attributes):
                    values.update(attributes)  # all new keys: same order as one by one
                else:
                    for key, value in attributes.items():
                        values.pop(key, None)  # a rewritten key moves to the end, as in the SDK
                        values[key] = value
        return True
    except AttributeError:
        return False


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
_blind_by_sampler: dict[int, tuple[Any, bool]] = {}


def sampler_ignores_attributes(tracer: Any) -> bool:
    """Whether ``tracer`` samples without looking at attributes: then a span's attributes can be
    written after its creation (in one trusted write) instead of being validated at creation.

    Only the SDK's stock samplers qualify (ParentBased only with stock delegates); any other
    sampler, or a tracer that is not the SDK's, gets its attributes at creation as usual.
    """
    sampler = getattr(tracer, "sampler", None)
    if sampler is None:
        return False
    cached = _blind_by_sampler.get(id(sampler))
    if cached is not None and cached[0] is sampler:
        return cached[1]
    blind = type(tracer) is sdk_trace.Tracer and _blind(sampler)
    if len(_blind_by_sampler) > 64:
        _blind_by_sampler.clear()
    _blind_by_sampler[id(sampler)] = (sampler, blind)
    return blind


def _blind(sampler: Any) -> bool:
    if type(sampler) not in _ATTRIBUTE_BLIND:
        return False
    if isinstance(sampler, sampling.ParentBased):
        return all(_blind(getattr(sampler, name, None)) for name in _PARENT_BASED_DELEGATES)
    return True
