"""``budgetspan.cached``: the cache for retrievals, embeddings and any deterministic function.

Each call is one ``cached {name}`` span (not a counted call: the model calls and retrievals a
miss makes are counted as usual, inside it), carrying what the cache answered and saved.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from budgetspan import attributes as A
from budgetspan.cache.core import Cacher, Outcome
from budgetspan.cache.policy import Cache
from budgetspan.events import internal_error
from budgetspan.runs import context

F = TypeVar("F", bound=Callable[..., Any])


def _base_attributes(name: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """The run and phase (the report groups spans by run) and the name; no
    ``gen_ai.operation.name``: a ``cached`` span is not a counted call, the calls inside it are."""
    attrs: dict[str, Any] = {A.CACHE_NAME: name, **(extra or {})}
    run = context.current_run()
    if run is not None:
        attrs[A.RUN_ID] = run.id
        attrs[A.WORKFLOW] = run.workflow
    phase = context.current_phase()
    if phase:
        attrs[A.PHASE] = phase
    return attrs


def hit_span(name: str, outcome: Outcome, extra: dict[str, Any] | None = None) -> None:
    """A hit's ``cached {name}`` span: everything known at its start, so written once."""
    try:
        attrs = _base_attributes(name, extra)
        attrs.update(outcome.attributes())
        context.get_tracer().start_span(
            A.SPAN_CACHED.format(name=name), kind=SpanKind.INTERNAL, attributes=attrs
        ).end()
    except Exception:
        internal_error("cached span")


@contextmanager
def cached_span(name: str, outcome: Outcome) -> Iterator[Span | None]:
    """A computed call's ``cached {name}`` span, current while the body runs; the outcome's
    attributes (what the computation cost) written at its end."""
    try:
        span: Span | None = context.get_tracer().start_span(
            A.SPAN_CACHED.format(name=name), kind=SpanKind.INTERNAL, attributes=_base_attributes(name, None)
        )
    except Exception:
        internal_error("cached span")
        span = None
    if span is None:
        yield None
        return
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        try:
            yield span
        finally:
            try:
                span.set_attributes(outcome.attributes())
                span.end()
            except Exception:
                internal_error("cached span end")


def _hit(name: str) -> Callable[[Outcome], Any]:
    def serve(outcome: Outcome) -> Any:
        hit_span(name, outcome)
        assert outcome.entry is not None
        return outcome.entry.value

    return serve


@overload
def cached(fn: F, /, *, name: str | None = None, cache: Cache | None = None, **policy: Any) -> F: ...
@overload
def cached(*, name: str | None = None, cache: Cache | None = None, **policy: Any) -> Callable[[F], F]: ...


def cached(fn: Any = None, /, *, name: str | None = None, cache: Cache | None = None, **policy: Any) -> Any:
    """Cache a function's results: ``@budgetspan.cached(scope="tenant", ttl_s=600)``, or
    ``budgetspan.cached(embed, cache=budgetspan.Cache("global", ttl_s=86400))``. ``policy`` is
    ``budgetspan.Cache``'s arguments (a freshness rule is required). Results must be plain JSON
    data; each hit returns a fresh copy."""
    declared = cache if cache is not None else Cache(**policy)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        label = str(name or getattr(func, "__qualname__", None) or getattr(func, "__name__", "function"))
        cacher = Cacher(declared, label)
        serve = _hit(label)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                async def compute(outcome: Outcome) -> Any:
                    with cached_span(label, outcome):
                        return await func(*args, **kwargs)

                return await cacher.acall(args, kwargs, compute, serve)

            awrapper.cache = cacher  # type: ignore[attr-defined]
            return awrapper

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            def compute(outcome: Outcome) -> Any:
                with cached_span(label, outcome):
                    return func(*args, **kwargs)

            return cacher.call(args, kwargs, compute, serve)

        wrapper.cache = cacher  # type: ignore[attr-defined]
        return wrapper

    return decorate(fn) if fn is not None else decorate


__all__ = ["cached", "cached_span", "hit_span"]
