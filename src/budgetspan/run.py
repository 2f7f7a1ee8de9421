"""Runs: the unit a budget applies to.

A run is declared with ``budgetspan.run(...)`` (a sync/async context manager and decorator) or is
implicit: with no declared run, the current trace is the run (an inbound request), and with no
trace at all the process is the run (a script). The current run and phase live in contextvars,
so they follow asyncio tasks and ``contextvars.copy_context()`` into threads.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import itertools
import os
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from enum import Enum
from typing import Any, ParamSpec, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.budget import Budget, BudgetExhausted, Limit, RunCancelled, ToolLimits, Usage
from budgetspan.config import get_config
from budgetspan.ledger import (
    CallKind,
    InMemoryLedger,
    Ledger,
    LedgerRefused,
    Mode,
    Refusal,
    Reservation,
    Spend,
)

P = ParamSpec("P")
R = TypeVar("R")


class Outcome(str, Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    ESCALATED = "escalated"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CANCELLED = "cancelled"


# --- process-wide state ---------------------------------------------------------------------

_ledger: Ledger = InMemoryLedger()
_tracer_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_live: dict[str, Run] = {}
_live_lock = threading.Lock()
_trace_runs: OrderedDict[int, Run] = OrderedDict()
_MAX_TRACE_RUNS = 10_000  # implicit runs whose root span was never seen end by eviction
_process_run: Run | None = None

_current_run: ContextVar[Run | None] = ContextVar("budgetspan_run", default=None)
_current_phase: ContextVar[str | None] = ContextVar("budgetspan_phase", default=None)
#: Inside a counted call: the Call object (or True, for `in_call()` blocks); False outside.
_in_call: ContextVar[Any] = ContextVar("budgetspan_in_call", default=False)


def get_ledger() -> Ledger:
    return _ledger


def set_ledger(ledger: Ledger) -> None:
    """Use another ledger backend (e.g. a shared one). Affects runs started afterwards."""
    global _ledger
    _ledger = ledger


def set_tracer_provider(provider: TracerProvider | None) -> None:
    """The provider budgetspan's own spans go to (None: the global one)."""
    global _tracer_provider, _tracer
    _tracer_provider = provider
    _tracer = None


def get_tracer() -> Tracer:
    global _tracer
    if _tracer is None:
        from budgetspan import __version__

        provider = _tracer_provider or trace.get_tracer_provider()
        _tracer = provider.get_tracer(A.INSTRUMENTATION_SCOPE, __version__)
    return _tracer


def default_workflow() -> str:
    """Workflow name of implicit runs: BUDGETSPAN_WORKFLOW, else the script's name."""
    name = os.environ.get("BUDGETSPAN_WORKFLOW")
    if name:
        return name
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    stem = os.path.splitext(argv0)[0]
    return stem if stem and stem not in ("-c", "-m", "") else "default"


# --- the run ------------------------------------------------------------------------------


class Run:
    """One budgeted execution. Created by ``budgetspan.run(...)`` or implicitly."""

    def __init__(
        self,
        workflow: str,
        budget: Budget,
        mode: Mode,
        *,
        implicit: bool = False,
        ledger: Ledger | None = None,
        run_id: str | None = None,
    ) -> None:
        self.id = run_id or uuid.uuid4().hex
        self.workflow = workflow
        self.budget = budget
        self.mode = mode
        self.implicit = implicit
        self.outcome: Outcome | None = None
        self.exhausted: BudgetExhausted | None = None
        self.would_exhaust: list[str] = []  # observe mode: limits that would have refused
        self.partial: dict[str, Any] = {"tool_results": [], "last_model_answer": None}
        self.result: Any = None
        self.error: BaseException | None = None
        self.busy_s = 0.0
        self.span: Span | None = None
        self.started_at = time.monotonic()
        self.start_time_ns = time.time_ns()
        self.duration_s: float | None = None
        self.final_usage: Usage | None = None
        self._ledger = ledger or _ledger
        self._tasks: set[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = set()
        self._explicit_outcome = False
        self._ended = False
        self._lock = threading.Lock()

    # lifecycle -------------------------------------------------------------------------
    def _start(self, with_span: bool) -> None:
        self._ledger.open(self.id, self.budget, self.mode, self.started_at)
        if with_span:
            attrs: dict[str, Any] = {
                A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_AGENT,
                A.GEN_AI_AGENT_NAME: self.workflow,
                A.RUN_ID: self.id,
                A.WORKFLOW: self.workflow,
                A.BUDGET_MODE: self.mode.value,
            }
            if self.budget.profile:
                attrs[A.BUDGET_PROFILE] = self.budget.profile
            for name, value in self.budget.limits().items():
                attrs[A.LIMIT_PREFIX + name] = value
            self.span = get_tracer().start_span(
                A.SPAN_RUN.format(workflow=self.workflow), kind=SpanKind.INTERNAL, attributes=attrs
            )
        with _live_lock:
            _live[self.id] = self
        events.emit("on_run_start", self)

    def _end(self, exc: BaseException | None = None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        if isinstance(exc, RunCancelled) or (
            self.exhausted is not None and isinstance(self.exhausted, RunCancelled)
        ):
            self.outcome = Outcome.CANCELLED
        elif self.exhausted is not None or isinstance(exc, BudgetExhausted):
            self.outcome = Outcome.BUDGET_EXHAUSTED
        elif isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)) and not self._explicit_outcome:
            self.outcome = Outcome.CANCELLED
        elif exc is not None and not self._explicit_outcome:
            self.outcome = Outcome.FAILURE
            self.error = exc
        elif self.outcome is None:
            self.outcome = Outcome.SUCCESS
        self.final_usage = self._ledger.close(self.id)
        self.duration_s = time.monotonic() - self.started_at
        with _live_lock:
            _live.pop(self.id, None)
        span = self.span
        if span is not None:
            try:
                if span.is_recording():  # a sampled-out span would drop the attributes anyway
                    self._finish_span(span, exc)
            finally:
                span.end()
        events.emit("on_run_end", self)

    def _finish_span(self, span: Span, exc: BaseException | None) -> None:
        u = self.final_usage or Usage()
        attrs: dict[str, Any] = {
            A.RUN_OUTCOME: self.outcome.value if self.outcome else "unknown",
            A.RUN_BUSY_S: self.busy_s,
            A.RUN_WALL_S: self.duration_s or 0.0,
            A.RUN_PARALLELISM: (self.busy_s / self.duration_s) if self.duration_s else 0.0,
        }
        for key, value in u.as_dict().items():
            if isinstance(value, (int, float)):
                attrs[A.USAGE_PREFIX + key] = value
        if self.exhausted is not None:
            attrs[A.EXHAUSTED_REASON] = self.exhausted.reason
            attrs[A.EXHAUSTED_EXPLANATION] = self.exhausted.explanation
        span.set_attributes(attrs)
        if self.outcome is Outcome.FAILURE and exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.set_attribute(A.ERROR_TYPE, type(exc).__qualname__)

    # outcomes --------------------------------------------------------------------------
    def succeed(self, result: Any = None) -> None:
        """Mark the run successful (the default on a clean exit)."""
        self._set_outcome(Outcome.SUCCESS)
        if result is not None:
            self.result = result

    def fail(self, error: BaseException | str | None = None) -> None:
        self._set_outcome(Outcome.FAILURE)
        if isinstance(error, BaseException):
            self.error = error

    def escalate(self, reason: str | None = None) -> None:
        """The run handed the task to a human; neither a success nor a failure."""
        self._set_outcome(Outcome.ESCALATED)
        if reason:
            self.partial["escalation_reason"] = reason

    def _set_outcome(self, outcome: Outcome) -> None:
        # Exhaustion and cancellation outrank what the code says: the run did stop at a limit.
        if self.exhausted is None:
            self.outcome = outcome
            self._explicit_outcome = True

    # partial results -------------------------------------------------------------------
    def add_partial(self, key: str, value: Any) -> None:
        """Keep something the run produced, for ``BudgetExhausted.partial``."""
        self.partial[key] = value

    def record_tool_result(self, tool: str, result: Any) -> None:
        self.partial["tool_results"].append({"tool": tool, "result": result})

    def record_model_answer(self, text: str | None) -> None:
        if text:
            self.partial["last_model_answer"] = text

    # accounting ------------------------------------------------------------------------
    @property
    def usage(self) -> Usage:
        if self.final_usage is not None:
            return self.final_usage
        try:
            return self._ledger.usage(self.id)
        except KeyError:
            return Usage()

    def remaining_s(self) -> float | None:
        """Seconds left before the wall-clock deadline (None: no deadline)."""
        deadline = self._ledger.deadline(self.id)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def reserve(
        self,
        kind: CallKind,
        *,
        tool: str | None = None,
        worst_case_cost: float | None = None,
        worst_case_tokens: int | None = None,
        tool_limits: ToolLimits | None = None,
    ) -> Reservation:
        """Reserve one call in the ledger; raise BudgetExhausted when a limit refuses it.

        Exhaustion is sticky: once a run has stopped at a limit, every later call is refused too.
        """
        stopped = self._stopped()
        if stopped is not None:
            raise self.exhaust(stopped)
        try:
            res = self._ledger.reserve(
                self.id,
                kind,
                tool=tool,
                worst_case_cost=worst_case_cost,
                worst_case_tokens=worst_case_tokens,
                tool_limits=tool_limits,
            )
        except LedgerRefused as refused:
            raise self.exhaust(refused.refusal) from None
        except KeyError:  # run already closed (work after the run ended): no limit applies
            return Reservation(self.id, kind, tool, done=True)
        if res.would_refuse is not None:
            self.note_would_refuse(res.would_refuse)
        return res

    def adopt(self, reservation: Reservation | None) -> Reservation | None:
        """Take over a reservation the processor made for this same call (another
        instrumentation's span around it); refused where ``reserve`` would refuse."""
        stopped = self._stopped()
        if stopped is not None:
            if reservation is not None:
                self.release(reservation)
            raise self.exhaust(stopped)
        return reservation

    def _stopped(self) -> Refusal | None:
        """The limit an enforcing run has already stopped at: every later call is refused by it."""
        stopped = self.exhausted
        if stopped is not None and self.mode is Mode.ENFORCE:
            return Refusal(stopped.reason, stopped.limit, stopped.tool)
        return None

    def check(self) -> None:
        """Raise BudgetExhausted if the run is already at a limit (no reservation)."""
        refusal = self._ledger.check(self.id)
        if refusal is not None:
            if self.mode is Mode.ENFORCE or refusal.reason == Limit.CANCELLED.value:
                raise self.exhaust(refusal)
            self.note_would_refuse(refusal)

    def exhaust(self, refusal: Refusal) -> BudgetExhausted:
        """Build the exception for ``refusal``; the first one sets the outcome and is recorded."""
        cls = RunCancelled if refusal.reason == Limit.CANCELLED.value else BudgetExhausted
        exc = cls(
            refusal.reason,
            refusal.limit,
            self.usage,
            self.partial,
            run_id=self.id,
            workflow=self.workflow,
            tool=refusal.tool,
        )
        first = False
        with self._lock:
            if self.exhausted is None:
                self.exhausted = exc
                first = True
        if first:
            self.outcome = Outcome.CANCELLED if cls is RunCancelled else Outcome.BUDGET_EXHAUSTED
            if self.span is not None:
                self.span.add_event(
                    A.EVENT_CANCELLED if cls is RunCancelled else A.EVENT_BUDGET_EXHAUSTED,
                    {A.EXHAUSTED_REASON: refusal.reason, A.EXHAUSTED_EXPLANATION: exc.explanation},
                )
            events.emit("on_exhausted", self, refusal.reason, False)
        return exc

    def note_would_refuse(self, refusal: Refusal) -> None:
        """Observe mode: record (once per limit) that enforce mode would have refused."""
        with self._lock:
            if refusal.reason in self.would_exhaust:
                return
            self.would_exhaust.append(refusal.reason)
        if self.span is not None:
            self.span.add_event(A.EVENT_WOULD_EXHAUST, {A.EXHAUSTED_REASON: refusal.reason})
        events.emit("on_exhausted", self, refusal.reason, True)

    def commit(
        self,
        reservation: Reservation,
        spend: Spend | None = None,
        *,
        finished: bool = True,
        unreported: bool = False,
        unpriced: bool = False,
    ) -> None:
        refusal = self._ledger.commit(
            reservation, spend, finished=finished, unreported=unreported, unpriced=unpriced
        )
        if refusal is not None:
            self.note_spend_limit(refusal)

    def add_spend(self, spend: Spend) -> None:
        refusal = self._ledger.add_spend(self.id, spend)
        if refusal is not None:
            self.note_spend_limit(refusal)

    def note_spend_limit(self, refusal: Refusal) -> None:
        """A commit reached a token or dollar limit: in enforce mode the ledger refuses the next
        reservation; observe mode records what it would have refused."""
        if self.mode is Mode.OBSERVE:
            self.note_would_refuse(refusal)

    def release(self, reservation: Reservation) -> None:
        self._ledger.release(reservation)

    # cancellation ----------------------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel the run: its next call raises RunCancelled, in-flight async calls are cancelled."""
        ok = self._ledger.cancel(self.id)
        for loop, task in list(self._tasks):
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # loop closed
                pass
        return ok

    @property
    def cancelled(self) -> bool:
        refusal = self._ledger.check(self.id)
        return refusal is not None and refusal.reason == Limit.CANCELLED.value

    def _track_task(self, task: asyncio.Task[Any]) -> Callable[[], None]:
        entry = (task.get_loop(), task)
        self._tasks.add(entry)
        return lambda: self._tasks.discard(entry)

    def __repr__(self) -> str:
        return f"<Run {self.workflow} id={self.id[:8]} outcome={self.outcome and self.outcome.value}>"


# --- declared runs: context manager and decorator -----------------------------------------


class RunScope:
    """``budgetspan.run(...)``: enter to start a run; use as a decorator for a run per call."""

    def __init__(
        self,
        workflow: str,
        budget: Budget | str | Mapping[str, Any] | None = None,
        mode: Mode | str | None = None,
        *,
        suppress_exhausted: bool = False,
        run_id: str | None = None,
        **limits: Any,
    ) -> None:
        cfg = get_config()
        self.workflow = workflow
        self.budget = cfg.budget_for(workflow, budget, **limits)
        self.mode = cfg.mode if mode is None else Mode(mode)
        self.suppress_exhausted = suppress_exhausted
        self.run_id = run_id
        self._stack: list[tuple[Run, Token[Run | None], Token[str | None], object]] = []

    def _enter(self) -> Run:
        run = Run(self.workflow, self.budget, self.mode, run_id=self.run_id)
        run._start(with_span=True)
        assert run.span is not None
        ctx_token = otel_context.attach(trace.set_span_in_context(run.span))
        self._stack.append((run, _current_run.set(run), _current_phase.set(None), ctx_token))
        return run

    def _exit(self, exc: BaseException | None) -> bool:
        run, run_token, phase_token, ctx_token = self._stack.pop()
        try:
            run._end(exc)
        finally:
            _current_phase.reset(phase_token)
            _current_run.reset(run_token)
            otel_context.detach(ctx_token)  # type: ignore[arg-type]
        return bool(self.suppress_exhausted and isinstance(exc, BudgetExhausted))

    def __enter__(self) -> Run:
        return self._enter()

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> bool:
        return self._exit(exc)

    async def __aenter__(self) -> Run:
        run = self._enter()
        task = asyncio.current_task()
        if task is not None:
            self._untrack = run._track_task(task)
        return run

    async def __aexit__(self, et: Any, exc: BaseException | None, tb: Any) -> bool:
        untrack = getattr(self, "_untrack", None)
        if untrack is not None:
            untrack()
        if isinstance(exc, asyncio.CancelledError) and self._stack and self._stack[-1][0].cancelled:
            run = self._stack[-1][0]
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            cancelled = run.exhaust(Refusal(Limit.CANCELLED.value, None))
            self._exit(cancelled)
            raise cancelled from exc
        return self._exit(exc)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        spec = self

        def fresh() -> RunScope:
            scope = RunScope.__new__(RunScope)
            scope.__dict__.update(spec.__dict__)
            scope._stack = []
            return scope

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                result: Any = None
                async with fresh():
                    result = await cast(Callable[..., Awaitable[Any]], fn)(*args, **kwargs)
                return result

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            result: Any = None  # stays None when suppress_exhausted swallowed BudgetExhausted
            with fresh():
                result = fn(*args, **kwargs)
            return cast(R, result)

        return wrapper


# --- implicit runs ------------------------------------------------------------------------


def current_run() -> Run | None:
    """The declared run this code runs in, or None."""
    return _current_run.get()


def current_phase() -> str | None:
    return _current_phase.get()


def resolve_run() -> Run:
    """The run a call is accounted to: declared, else the trace's, else the process's."""
    run = _current_run.get()
    if run is not None:
        return run
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        return _trace_run(ctx.trace_id)
    return _get_process_run()


def _new_implicit_run() -> Run:
    cfg = get_config()
    workflow = default_workflow()
    run = Run(workflow, cfg.budget_for(workflow), cfg.mode, implicit=True)
    run._start(with_span=False)
    return run


def _trace_run(trace_id: int) -> Run:
    with _live_lock:
        run = _trace_runs.get(trace_id)
        if run is not None:
            return run
    run = _new_implicit_run()
    evicted: list[Run] = []
    with _live_lock:
        existing = _trace_runs.get(trace_id)
        if existing is not None:
            evicted.append(run)  # lost a race: end our duplicate quietly
            run = existing
        else:
            _trace_runs[trace_id] = run
            while len(_trace_runs) > _MAX_TRACE_RUNS:
                evicted.append(_trace_runs.popitem(last=False)[1])
    for old in evicted:
        old._end(None)
    return run


def end_trace_run(trace_id: int, error: bool = False) -> None:
    """The local root span of a trace ended: its implicit run ends too."""
    with _live_lock:
        run = _trace_runs.pop(trace_id, None)
    if run is not None:
        if error:
            run.fail()
        run._end(None)


def has_trace_run(trace_id: int) -> bool:
    return trace_id in _trace_runs


_process_lock = threading.Lock()


def _get_process_run() -> Run:
    global _process_run
    run = _process_run
    if run is None or run._ended:
        with _process_lock:
            if _process_run is None or _process_run._ended:
                _process_run = _new_implicit_run()
            run = _process_run
    return run


def end_process_run() -> None:
    """End the implicit process run (at exit, or by tests)."""
    global _process_run
    run, _process_run = _process_run, None
    if run is not None:
        run._end(None)


atexit.register(end_process_run)


def live_runs() -> list[Run]:
    with _live_lock:
        return list(_live.values())


def get_run(run_id: str) -> Run | None:
    return _live.get(run_id)


def cancel(run_id: str) -> bool:
    """Cancel a live run by id; False if no such run is live."""
    run = _live.get(run_id)
    return run.cancel() if run is not None else False


# --- phases -------------------------------------------------------------------------------

_phase_counter = itertools.count()


class PhaseScope:
    """``budgetspan.phase(name)``: everything inside is tagged with this phase."""

    def __init__(self, name: str, label: str | None = None) -> None:
        from budgetspan.phase import check_phase

        self.name = check_phase(name)
        self.label = label
        self._stack: list[tuple[Span, Token[str | None], object, float, Run | None]] = []
        self.duration_s: float | None = None

    def __enter__(self) -> PhaseScope:
        run = _current_run.get()
        attrs: dict[str, Any] = {A.PHASE: self.name}
        if self.label:
            attrs[A.PHASE_LABEL] = self.label
        if run is not None:
            attrs[A.RUN_ID] = run.id
            attrs[A.WORKFLOW] = run.workflow
        span = get_tracer().start_span(A.SPAN_PHASE.format(phase=self.name), attributes=attrs)
        ctx_token = otel_context.attach(trace.set_span_in_context(span))
        self._stack.append((span, _current_phase.set(self.name), ctx_token, time.monotonic(), run))
        events.emit("on_phase_start", run, self.name, self.label)
        return self

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        span, phase_token, ctx_token, start, run = self._stack.pop()
        self.duration_s = time.monotonic() - start
        _current_phase.reset(phase_token)
        otel_context.detach(ctx_token)  # type: ignore[arg-type]
        if exc is not None and not isinstance(exc, BudgetExhausted):
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()
        workflow = run.workflow if run is not None else default_workflow()
        events.emit("on_phase_end", run, workflow, self.name, self.duration_s)

    async def __aenter__(self) -> PhaseScope:
        return self.__enter__()

    async def __aexit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(et, exc, tb)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        name, label = self.name, self.label
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                async with PhaseScope(name, label):
                    return await cast(Callable[..., Awaitable[Any]], fn)(*args, **kwargs)

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with PhaseScope(name, label):
                return fn(*args, **kwargs)

        return wrapper


def approval(label: str = "Waiting for approval") -> PhaseScope:
    """Measure a human wait (an approval) as the ``approval`` phase."""
    return PhaseScope("approval", label)


@contextmanager
def in_call() -> Iterator[bool]:
    """Mark the current context as inside a counted call; yields whether it is the outermost."""
    outer = not _in_call.get()
    token = _in_call.set(True)
    try:
        yield outer
    finally:
        _in_call.reset(token)
