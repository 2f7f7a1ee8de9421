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


@contextmanager
def cached_span(name: str, outcome: Outcome, extra: dict[str, Any] | None = None) -> Iterator[Span | None]:
    """A ``cached {name}`` span, current while the body runs; the outcome's attributes written at
    its end. It carries the run and phase (the report groups spans by run) but no
    ``gen_ai.operation.name``: it is not a counted call, the calls inside it are."""
    try:
        attrs: dict[str, Any] = {A.CACHE_NAME: name, **(extra or {})}
        run = context.current_run()
        if run is not None:
            attrs[A.RUN_ID] = run.id
            attrs[A.WORKFLOW] = run.workflow
        phase = context.current_phase()
        if phase:
            attrs[A.PHASE] = phase
        span: Span | None = context.get_tracer().start_span(
            A.SPAN_CACHED.format(name=name), kind=SpanKind.INTERNAL, attributes=attrs
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
        with cached_span(name, outcome):
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


__all__ = ["cached", "cached_span"]
