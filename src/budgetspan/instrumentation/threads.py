"""The run follows the work into threads: ``Thread``, ``ThreadPoolExecutor`` and so
``loop.run_in_executor`` and ``asyncio.to_thread``.

A thread starts with an empty context, so a call made in it would not know the run it serves and
would be charged to an implicit run beside it: a budget that silently does not hold. As
OpenTelemetry's threading instrumentation carries the trace context, this carries the whole
``contextvars`` context (budgetspan's run, phase and the OpenTelemetry context with it) from where
the thread is started or the task submitted, but only while a budgetspan run or phase is current:
other programs' threads are left as they are. ``BUDGETSPAN_THREADS=false`` turns it off.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from budgetspan import attributes as A
from budgetspan.runs import context


def enabled(environ: Any = None) -> bool:
    """Off only when ``BUDGETSPAN_THREADS`` says so."""
    env = os.environ if environ is None else environ
    return env.get(A.ENV_PROPAGATE_THREADS, "").strip().lower() not in ("false", "0", "no", "off")


def _worth_carrying() -> bool:
    return context.current_run() is not None or context.current_phase() is not None


def _submit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if args and _worth_carrying():
        ctx = contextvars.copy_context()
        return wrapped(ctx.run, *args, **kwargs)
    return wrapped(*args, **kwargs)


def _start(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if _worth_carrying():
        # On the instance, so that a subclass's own ``run`` is carried too.
        ctx = contextvars.copy_context()
        body = instance.run
        instance.run = lambda: ctx.run(body)
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
        self._wrapped = True

    def _uninstrument(self, **kwargs: Any) -> None:
        if getattr(self, "_wrapped", False):
            unwrap(concurrent.futures.ThreadPoolExecutor, "submit")
            unwrap(threading.Thread, "start")
            self._wrapped = False
