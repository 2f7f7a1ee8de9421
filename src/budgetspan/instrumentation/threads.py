"""The run follows the work into threads: ``Thread``, ``ThreadPoolExecutor`` and so
``loop.run_in_executor`` and ``asyncio.to_thread``, and ``multiprocessing.pool.ThreadPool``.

A thread starts with an empty context, so a call made in it would not know the run it serves and
would be charged to an implicit run beside it: a budget that silently does not hold. As
OpenTelemetry's threading instrumentation carries the trace context, this carries the whole
``contextvars`` context (budgetspan's run, phase and the OpenTelemetry context with it) from where
the thread is started or the task submitted, but only while a budgetspan run or phase, or a trace
(the run of a request when none is declared), is current: other threads are left as they are.
``BUDGETSPAN_THREADS=false`` turns it off.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Callable, Collection
from multiprocessing.pool import Pool, ThreadPool
from typing import Any

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from budgetspan import attributes as A
from budgetspan.runs import context


def enabled(environ: Any = None) -> bool:
    """Off only when ``BUDGETSPAN_THREADS`` says so."""
    env = os.environ if environ is None else environ
    return env.get(A.ENV_PROPAGATE_THREADS, "").strip().lower() not in ("false", "0", "no", "off")


def _worth_carrying() -> bool:
    """A declared run or phase is current, or a trace: with no run declared, the trace is the run
    (an inbound request), and a thread without it would spend from the process's run instead."""
    return (
        context.current_run() is not None
        or context.current_phase() is not None
        or trace.get_current_span().get_span_context().is_valid
    )


def _submit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if args and _worth_carrying():
        ctx = contextvars.copy_context()
        return wrapped(ctx.run, *args, **kwargs)
    return wrapped(*args, **kwargs)


def _pool_workers() -> tuple[Any, ...]:
    """The bodies of pool worker threads: each task they run carries its own context (``_submit``,
    ``_pool_task``); the worker itself must keep none, or a task given outside any run later
    would run in the run the pool happened to start in (ended, its limits no longer applying)."""
    import multiprocessing.pool
    from concurrent.futures import thread

    return tuple(
        w for w in (getattr(thread, "_worker", None), getattr(multiprocessing.pool, "worker", None)) if w
    )


def _start(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if _worth_carrying() and getattr(instance, "_target", None) not in _pool_workers():
        # On the instance, so that a subclass's own ``run`` is carried too.
        ctx = contextvars.copy_context()
        body = instance.run
        instance.run = lambda: ctx.run(body)
    return wrapped(*args, **kwargs)


#: ``Pool`` methods that take the function its workers run first (``map``, ``starmap`` and their
#: ``_async`` forms go through ``_map_async``; ``apply`` through ``apply_async``).
_POOL_METHODS = ("apply_async", "_map_async", "imap", "imap_unordered")


def _carried(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` run in a copy of the current context at each call: a pool runs one function in
    several workers at once, and one context cannot be entered twice at a time."""
    ctx = contextvars.copy_context()

    def carried(*args: Any, **kwargs: Any) -> Any:
        return ctx.copy().run(func, *args, **kwargs)

    return carried


def _pool_task(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A ``ThreadPool``'s workers were started when it was made, often before the run: its tasks
    carry the context they were given in. A process pool is left alone (its function is pickled)."""
    if args and isinstance(instance, ThreadPool) and _worth_carrying():
        return wrapped(_carried(args[0]), *args[1:], **kwargs)
    return wrapped(*args, **kwargs)


class ThreadsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Carries budgetspan's run into threads and thread pools (stdlib only, always available)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        if not enabled():
            return
        wrapt.wrap_function_wrapper(concurrent.futures.ThreadPoolExecutor, "submit", _submit)
        wrapt.wrap_function_wrapper(threading.Thread, "start", _start)
        for name in _POOL_METHODS:
            wrapt.wrap_function_wrapper(Pool, name, _pool_task)
        self._wrapped = True

    def _uninstrument(self, **kwargs: Any) -> None:
        if getattr(self, "_wrapped", False):
            unwrap(concurrent.futures.ThreadPoolExecutor, "submit")
            unwrap(threading.Thread, "start")
            for name in _POOL_METHODS:
                unwrap(Pool, name)
            self._wrapped = False
