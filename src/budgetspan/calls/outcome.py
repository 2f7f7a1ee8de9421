"""How a call ended, as a status word and as what its span records."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import BudgetExhausted


def status_of(error: BaseException | None) -> str:
    """ok | cancelled | timeout | refused | error."""
    if error is None:
        return "ok"
    if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
        return "cancelled"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, BudgetExhausted):
        return "refused"
    return "error"


#: Timeouts of the SDKs and HTTP clients that are no ``TimeoutError`` (openai's and anthropic's
#: ``APITimeoutError``, httpx's ``ReadTimeout``, urllib3's and botocore's ``ReadTimeoutError``).
_TIMEOUT_NAMES = frozenset({"APITimeoutError", "ReadTimeout", "ReadTimeoutError"})
_CUT_REASONS = frozenset({"max_wall_clock_s", "cancelled"})


def cut_short(error: BaseException | None) -> bool:
    """Whether a call ended waiting for its answer: cancelled, timed out, stopped by the run's
    deadline or cancel. Its request most likely reached the server, which answers (and bills)
    whether or not the caller is still there."""
    if error is None:
        return False
    if isinstance(error, (asyncio.CancelledError, TimeoutError)):
        return True
    if isinstance(error, BudgetExhausted):
        return error.reason in _CUT_REASONS
    return any(cls.__name__ in _TIMEOUT_NAMES for cls in type(error).__mro__)


def record_failure(
    span: Span, attrs: dict[str, Any], error: BaseException | None, status: str, redact: bool
) -> None:
    """Mark a span that did not end ``ok``: error type, status, and the exception (redacted)."""
    if status == "ok":
        return
    if status == "timeout":
        attrs[A.TOOL_TIMED_OUT] = True
    if error is None:
        attrs[A.ERROR_TYPE] = status
        span.set_status(Status(StatusCode.ERROR, status))
        return
    attrs[A.ERROR_TYPE] = type(error).__qualname__
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))  # first: recording may fail
    if status != "cancelled":
        record_error(span, error, redact=redact)


def record_error(span: Span, error: BaseException, *, redact: bool) -> None:
    """Record the exception; unless content capture is on, without its message.

    A provider's error often quotes the request ("Invalid content: '...'") and a tool's error its
    input ("no customer for alice@example.com"): the message and the last line of the stack trace
    would put that text on the span. The frames stay, for debugging. The event is written here,
    not by the SDK's ``record_exception``, which reads ``str(error)`` (it may raise, or be slow).
    """
    if not redact:
        span.record_exception(error)
        return
    try:
        status = getattr(error, "status_code", None)  # a framework's property may raise
    except Exception:
        status = None
    kind = type(error)
    message = kind.__name__ + (f" (HTTP {status})" if type(status) is int else "")
    frames = events.format_frames(error.__traceback__) + message
    module = kind.__module__
    span.add_event(
        A.EVENT_EXCEPTION,
        {
            A.EXCEPTION_TYPE: kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}",
            A.EXCEPTION_MESSAGE: message,
            A.EXCEPTION_STACKTRACE: frames,
            A.EXCEPTION_ESCAPED: "False",
        },
    )
