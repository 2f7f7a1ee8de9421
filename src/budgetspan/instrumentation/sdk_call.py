"""One SDK method run as a budgeted ``Call``: reserve before the request, count the SDK's retries.

The ledger reservation and the span open *before* the request (a refused call sends nothing), the
SDK's own retries are counted through ``CURRENT_CALL``, and the result is handed to an ``Observer``
that knows the provider's shapes. Inside ``suppress_instrumentation()`` the method runs untouched.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from budgetspan.accounting.ledger import Spend
from budgetspan.accounting.rule import Held, spend_refusal
from budgetspan.calls.call import Call
from budgetspan.calls.pricing import call_cost
from budgetspan.events import internal_error
from budgetspan.instrumentation.observers import Observer
from budgetspan.instrumentation.raw_response import watch_raw
from budgetspan.instrumentation.streams import (
    AsyncStreamProxy,
    SyncStreamProxy,
    finish_now,
    is_raw,
    is_stream,
)

#: The model call whose SDK request is running in this context (for the retry hook).
CURRENT_CALL: ContextVar[Call | None] = ContextVar("budgetspan_current_model_call", default=None)


# --- one call -----------------------------------------------------------------------------------


def take_result(call: Call, observer: Observer, result: Any, asynchronous: bool) -> Any:
    """Hand the SDK's result back, wrapped where the call is not over yet."""
    try:
        if is_stream(result):
            proxy = AsyncStreamProxy if asynchronous else SyncStreamProxy
            return proxy(result, call, observer)
        if is_raw(result):
            watch_raw(call, observer, result, asynchronous)
            return result
        call.defer_commit = True  # the call ends right below: one ledger commit for all of it
        observer.on_response(result)
    except Exception:
        internal_error("take_result")
    finish_now(call, observer)
    return result


def _send(observer: Observer, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    try:
        return wrapped(*args, **kwargs)
    except Exception as e:
        if not observer.undo_change(e, kwargs):
            raise
    return wrapped(*args, **kwargs)


async def _asend(observer: Observer, wrapped: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    except Exception as e:
        if not observer.undo_change(e, kwargs):
            raise
    return await wrapped(*args, **kwargs)


class Sending:
    """``with Sending(call), call.activate():`` the SDK request runs as ``call``: ``CURRENT_CALL``
    set for the retry hook, and the call ended with the error when the request fails. A class
    rather than a generator context manager: it is on every model call's path."""

    __slots__ = ("call", "token")

    def __init__(self, call: Call) -> None:
        self.call = call

    def __enter__(self) -> None:
        self.token = CURRENT_CALL.set(self.call)

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is not None:
                self.call.end(exc)
        finally:
            CURRENT_CALL.reset(self.token)


def invoke(call: Call, observer: Observer, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run a synchronous SDK method as ``call`` (BudgetExhausted before any request)."""
    call.start()
    with Sending(call), call.activate():
        result = _send(observer, wrapped, args, kwargs)
    return take_result(call, observer, result, asynchronous=False)


async def ainvoke(
    call: Call, observer: Observer, wrapped: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
) -> Any:
    """Run an async SDK method as ``call``, bounded by the run's wall clock."""
    await call.astart()
    with Sending(call), call.activate():
        async with call.deadline():
            result = await _asend(observer, wrapped, args, kwargs)
    return take_result(call, observer, result, asynchronous=True)


def in_model_call() -> bool:
    """True inside an instrumented SDK request (a nested wrapper must not count it twice)."""
    return CURRENT_CALL.get() is not None


# --- retries ------------------------------------------------------------------------------------


#: The HTTP clients' timeouts after the request was written (httpx's): the server answers and
#: bills it anyway. A connect or pool timeout sent nothing.
_SENT_TIMEOUTS = frozenset({"ReadTimeout", "WriteTimeout"})


def _count_retry() -> None:
    call = CURRENT_CALL.get()
    if call is not None:
        error = sys.exc_info()[1]  # (the SDKs sleep for a retry inside their ``except`` block)
        if error is not None and type(error).__name__ in _SENT_TIMEOUTS:
            _charge_lost_attempt(call)
        call.retry()  # BudgetExhausted (max_retries, or the limit the lost attempt reached) propagates


def _charge_lost_attempt(call: Call) -> None:
    """An attempt the SDK gave up waiting for and sends again: the server still writes and bills
    it, unseen, so its worst case (input estimate and output) is spent, as for a call cut short."""
    run, reservation = call.run, call.reservation
    if run is None or reservation is None or not call.is_model:
        return
    try:
        figures = Spend(call.worst_case_input_tokens, call.worst_case_tokens)
        figures.cost_usd = call_cost(call.provider, call.model, call.response_model, figures)
        run.add_spend(figures, reservation)
        # The next attempt's worst case is the same as this one's: refused if it no longer fits.
        worst = Held(figures.cost_usd or 0.0, figures.input_tokens or 0, figures.output_tokens or 0)
        over = spend_refusal(run.budget, run.usage, worst=worst)
    except Exception:
        internal_error("lost attempt")
        return
    if over is not None:  # the next attempt is not sent
        raise run.exhaust(over)


def retry_hook(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    """Wraps the SDK client's ``_sleep_for_retry``: one call per extra attempt."""
    _count_retry()
    return wrapped(*args, **kwargs)


async def aretry_hook(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    _count_retry()
    return await wrapped(*args, **kwargs)


def retry_patch(asynchronous: bool) -> Callable[..., Any]:
    return aretry_hook if asynchronous else retry_hook
