"""Listeners for what runs and calls do: metrics, progress and reports subscribe here.

The ledger and the wrappers emit these whether or not the span is sampled, so metrics stay
right under any sampler. A listener that raises is logged and skipped: it can never break the
user's program.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from budgetspan.accounting.ledger import Spend
    from budgetspan.runs.run import Run

log = logging.getLogger(__name__)


@dataclass
class CallRecord:
    """One finished model call, tool call or retrieval."""

    kind: str  # "model" | "tool" | "retrieval"
    workflow: str
    phase: str
    duration_s: float
    status: str = "ok"  # ok | error | timeout | cancelled | refused
    provider: str | None = None
    model: str | None = None
    tool: str | None = None
    spend: Spend | None = None
    cost_usd: float | None = None
    unreported_usage: bool = False
    unpriced: bool = False
    retries: int = 0
    time_to_first_token_s: float | None = None
    documents: int | None = None
    label: str | None = None  # a readable milestone label ("Searching policy")
    # gen_ai.operation.name of budgetspan's own calls; None for calls seen on another
    # instrumentation's span (that instrumentation records its own GenAI metrics).
    operation: str | None = None
    step: str = ""  # budgetspan.step(...); empty: the phase
    run: Run | None = field(default=None, repr=False)
    #: The trace of the call's span when it is sampled (an exemplar links to it); None otherwise.
    trace_id: int | None = None


@dataclass
class CacheRecord:
    """One request to budgetspan's cache (``budgetspan.cache``): what it answered and saved."""

    tool: str
    result: str  # hit | miss | skipped | unavailable
    workflow: str
    reason: str | None = None  # why skipped or unavailable: no_tenant, no_user, arguments, value, backend
    saved_usd: float | None = None  # a hit: the original computation's recorded cost (None: unknown)
    saved_s: float | None = None  # a hit: the original duration, less the lookup's
    run: Run | None = field(default=None, repr=False)


class Listener(Protocol):
    """Implement any subset; missing methods are skipped."""

    def on_run_start(self, run: Run) -> None: ...
    def on_run_end(self, run: Run) -> None: ...
    def on_call_start(self, kind: str, name: str, run: Run | None, phase: str, label: str | None) -> None: ...
    def on_call_end(self, record: CallRecord) -> None: ...
    def on_phase_start(self, run: Run | None, phase: str, label: str | None) -> None: ...
    def on_phase_end(self, run: Run | None, workflow: str, phase: str, duration_s: float) -> None: ...
    def on_exhausted(self, run: Run, reason: str, observe: bool) -> None: ...
    def on_internal_error(self, where: str) -> None: ...
    def on_spans_dropped(self, reason: str, count: int) -> None: ...
    # background jobs: a job entered ``state`` (queued | running | retried | its outcome); its
    # first start, ``wait_s`` after it was submitted
    def on_job_state(self, workflow: str, state: str) -> None: ...
    def on_job_queue_wait(self, workflow: str, wait_s: float) -> None: ...
    def on_budget_extended(self, run: Run, limit: str) -> None: ...
    def on_tool_refused(self, run: Run, tool: str, reason: str) -> None: ...
    def on_loop(self, run: Run, kind: str, status: str) -> None: ...
    def on_cache(self, record: CacheRecord) -> None: ...
    def on_scope_warning(self, warning: Any) -> None: ...  # an accounting.scopes.ScopeWarning
    # dollars a call spent after its run ended (a stream read after the block): not in its figure
    def on_late_spend(self, run: Run, cost_usd: float) -> None: ...


_listeners: list[Any] = []
# event name -> the bound methods that handle it, rebuilt when listeners change.
_handlers: dict[str, tuple[tuple[Any, Any], ...]] = {}
_EVENTS = tuple(name for name in vars(Listener) if name.startswith("on_"))  # the Protocol's events


def _rebuild() -> None:
    global _handlers
    table: dict[str, tuple[tuple[Any, Any], ...]] = {}
    for event in _EVENTS:
        found = tuple(
            (listener, fn) for listener in _listeners if (fn := getattr(listener, event, None)) is not None
        )
        if found:
            table[event] = found
    _handlers = table


_change_lock = threading.Lock()  # two threads adding listeners at once must not lose one


def add_listener(listener: Any) -> None:
    with _change_lock:
        if listener not in _listeners:
            _listeners.append(listener)
            _rebuild()


def remove_listener(listener: Any) -> None:
    with _change_lock:
        if listener in _listeners:
            _listeners.remove(listener)
            _rebuild()


def internal_error(where: str) -> None:
    """Log an error inside budgetspan (never raised to the user) and count it.

    The warning names the error's type only: its message may quote a prompt or a tool's input.
    The traceback is logged at DEBUG, for whoever debugs budgetspan itself, without messages
    (see ``redacted_traceback``).
    """
    error = sys.exc_info()[1]
    kind = type(error).__name__ if error is not None else "error"
    log.warning("budgetspan internal error in %s: %s (the program goes on)", where, kind)
    if error is not None and log.isEnabledFor(logging.DEBUG):
        log.debug("budgetspan internal error in %s\n%s", where, redacted_traceback(error))
    emit("on_internal_error", where)


def log_failure(logger: logging.Logger, message: str, *args: Any, level: int = logging.WARNING) -> None:
    """Log the exception being handled (a user's callback or listener that raised) as
    ``message: ErrorType`` at ``level`` and its redacted traceback at DEBUG, never its text."""
    error = sys.exc_info()[1]
    logger.log(level, message + ": %s", *args, type(error).__name__ if error is not None else "error")
    if error is not None and logger.isEnabledFor(logging.DEBUG):
        logger.debug(message + "\n%s", *args, redacted_traceback(error))


def redacted_traceback(error: BaseException, most: int = 16) -> str:
    """The frames and exception types of ``error`` and of the exceptions chained to it, without
    their messages: an exception's text (its ``str``, ``args``, notes) may quote a prompt, a tool's
    input or a customer's address, and reading it may itself raise. Newest first."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(parts) < most:
        seen.add(id(current))
        kind = type(current)
        name = (
            kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        )
        if isinstance(current, BaseExceptionGroup):
            name += " of " + ", ".join(type(e).__qualname__ for e in current.exceptions[:most])
        frames = format_frames(current.__traceback__)
        parts.append(f"Traceback (most recent call last):\n{frames}{name} (message not logged)")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n\nraised while handling:\n\n".join(parts)


def format_frames(tb: TracebackType | None) -> str:
    """A traceback's frames as ``traceback.format_tb`` gives them, without its carets: to place
    them, Python 3.11 parses each line with ``ast``, whose recursion count 3.11 keeps in state
    shared by threads, so two threads formatting at once can raise SystemError in either
    (CPython gh-106905; seen as a pytest INTERNALERROR while a budgetspan thread logged)."""
    lines = []
    for frame in traceback.extract_tb(tb):
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n')
        if frame.line:
            lines.append(f"    {frame.line.strip()}\n")
    return "".join(lines)


def emit(event: str, *args: Any) -> None:
    """Call ``event`` on every listener that has it; errors are logged, never raised."""
    for listener, fn in _handlers.get(event, ()):
        try:
            fn(*args)
        except Exception:
            log_failure(log, "budgetspan listener %r failed in %s", listener, event, level=logging.ERROR)
