"""``budgetspan.run(...)`` and ``budgetspan.phase(...)``: context managers and decorators.

A scope object keeps no per-entry state of its own: what one entry needs to undo lives in a
context variable, so one scope object entered from two threads or tasks gives two runs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import Budget, BudgetExhausted, Limit
from budgetspan.accounting.ledger import Mode, Refusal
from budgetspan.config import get_config
from budgetspan.runs import context
from budgetspan.runs.limits import Policy
from budgetspan.runs.phases import check_phase
from budgetspan.runs.run import Run

P = ParamSpec("P")
R = TypeVar("R")

#: (scope, what its exit needs) for every scope entered in this context, innermost last.
_entered: ContextVar[tuple[tuple[object, Any], ...]] = ContextVar("budgetspan_scopes", default=())


def _push(scope: object, state: Any) -> None:
    _entered.set((*_entered.get(), (scope, state)))


def _pop(scope: object) -> Any:
    return context.pop_entered(_entered, scope, "scope")


class _current:
    """Make ``run`` (and its span) current for a block. A class, not a generator: a run left open
    in a thread that never ends (a daemon) must not be undone by the collector at exit."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.tokens: Any = None
        self.span_token: Any = None

    def __enter__(self) -> None:
        self.tokens = context.enter_run(self.run)
        span = self.run.span
        self.span_token = otel_context.attach(trace.set_span_in_context(span)) if span else None

    def __exit__(self, *exc: Any) -> None:
        if self.span_token is not None:
            otel_context.detach(self.span_token)
        context.exit_run(self.tokens)


class RunScope:
    """``budgetspan.run(...)``: enter to start a run; use as a decorator for a run per call
    (on a generator or async generator, the run spans the whole iteration)."""

    def __init__(
        self,
        workflow: str,
        budget: Budget | str | Mapping[str, Any] | None = None,
        mode: Mode | str | None = None,
        *,
        suppress_exhausted: bool = False,
        run_id: str | None = None,
        conversation_id: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        permissions: Iterable[str] = (),
        on_limit: Policy | None = None,
        **limits: Any,
    ) -> None:
        """``limits``: any of the budget's limits, loop limits and ``reserve_for_final`` (e.g.
        ``reserve_for_final={"max_model_calls": 1}``); ``on_limit``: the policy asked when a call
        would be refused (``runs/limits.py``)."""
        cfg = get_config()
        self.workflow = workflow
        self.budget = cfg.budget_for(workflow, budget, **limits)
        self.mode = cfg.mode if mode is None else Mode(mode)
        self.suppress_exhausted = suppress_exhausted
        self.run_id = run_id
        # gen_ai.conversation.id: the session this run serves. Ids as text: a database's 123 is
        # the tenant that "123" (a TOML key, a budget set in code) names.
        self.conversation_id, self.tenant, self.user = (
            None if v is None else str(v) for v in (conversation_id, tenant, user)
        )
        if isinstance(permissions, str):
            raise TypeError("permissions: a collection of names, not one string")
        self.permissions = frozenset(permissions)
        self.on_limit = on_limit

    # one run -------------------------------------------------------------------------------
    def open(self) -> Run:
        """Start a run (a child of the current one), without making it current."""
        parent = context.current_run()
        run = Run(self.workflow, self.budget, self.mode, run_id=self.run_id, parent=parent)
        # A nested run serves whom its parent serves, unless it says otherwise.
        run.conversation_id, run.tenant, run.user = self.conversation_id, self.tenant, self.user
        run.permissions = self.permissions
        run.on_limit = self.on_limit
        if parent is not None and not parent.implicit:
            run.conversation_id = run.conversation_id or parent.conversation_id
            run.tenant = run.tenant or parent.tenant
            run.user = run.user or parent.user
            run.permissions = run.permissions or parent.permissions
        run._start(with_span=True)
        return run

    def close(self, run: Run, exc: BaseException | None) -> bool:
        """End ``run``; True when the exception is to be swallowed (``suppress_exhausted``)."""
        run._end(exc)
        return bool(self.suppress_exhausted and isinstance(exc, BudgetExhausted))

    def __enter__(self) -> Run:
        run = self.open()
        block = _current(run)
        block.__enter__()
        _push(self, (run, block, None))
        return run

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> bool:
        run, block, untrack = _pop(self)
        if untrack is not None:
            untrack()
        try:
            return self.close(run, exc)
        finally:
            block.__exit__(None, None, None)

    async def __aenter__(self) -> Run:
        run = self.__enter__()
        task = asyncio.current_task()
        if task is not None:
            state = _pop(self)
            _push(self, (state[0], state[1], run.track_task(task)))
        return run

    async def __aexit__(self, et: Any, exc: BaseException | None, tb: Any) -> bool:
        stack = _entered.get()
        run = next((state[0] for scope, state in reversed(stack) if scope is self), None)
        if isinstance(exc, asyncio.CancelledError) and run is not None and run.cancelled:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            cancelled = run.exhaust(Refusal(Limit.CANCELLED.value, None))
            self.__exit__(type(cancelled), cancelled, None)
            raise cancelled from exc
        return self.__exit__(et, exc, tb)

    # decorator -----------------------------------------------------------------------------
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isasyncgenfunction(fn):
            return cast(Callable[P, R], self._wrap_async_generator(fn))
        if inspect.isgeneratorfunction(fn):
            return cast(Callable[P, R], self._wrap_generator(fn))
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                result: Any = None
                async with self:
                    result = await fn(*args, **kwargs)
                return result

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            result: Any = None  # stays None when suppress_exhausted swallowed BudgetExhausted
            with self:
                result = fn(*args, **kwargs)
            return cast(R, result)

        return wrapper

    def _wrap_generator(self, fn: Callable[..., Generator[Any, Any, Any]]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            run = self.open()
            with _Lifetime(self, run):
                inner = fn(*args, **kwargs)
                sent: Any = None
                thrown: BaseException | None = None
                while True:
                    with _current(run):  # current while the body runs, not while the caller does
                        try:
                            item = inner.throw(thrown) if thrown is not None else inner.send(sent)
                        except StopIteration as stop:
                            return stop.value
                    try:
                        sent, thrown = (yield item), None
                    except GeneratorExit:
                        with _current(run):
                            inner.close()
                        raise
                    except BaseException as e:  # thrown in by the caller: pass it to the body
                        sent, thrown = None, e
            return None  # (suppress_exhausted swallowed the refusal)

        return generator

    def _wrap_async_generator(self, fn: Callable[..., AsyncGenerator[Any, Any]]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            run = self.open()
            with _Lifetime(self, run):
                inner = fn(*args, **kwargs)
                sent: Any = None
                thrown: BaseException | None = None
                while True:
                    with _current(run):
                        try:
                            step = inner.athrow(thrown) if thrown is not None else inner.asend(sent)
                            item = await step
                        except StopAsyncIteration:
                            return
                    try:
                        sent, thrown = (yield item), None
                    except GeneratorExit:
                        with _current(run):
                            await inner.aclose()
                        raise
                    except BaseException as e:
                        sent, thrown = None, e

        return generator


class _Lifetime:
    """Ends a generator's run however the iteration ends: exhausted, closed early, or failed
    (swallowing ``BudgetExhausted`` under ``suppress_exhausted``)."""

    def __init__(self, scope: RunScope, run: Run) -> None:
        self.scope, self.run = scope, run

    def __enter__(self) -> None:
        pass

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, GeneratorExit):
            self.scope.close(self.run, None)
            return False
        return self.scope.close(self.run, exc)


class PhaseScope:
    """``budgetspan.phase(name)``: everything inside is tagged with this phase."""

    def __init__(self, name: str, label: str | None = None) -> None:
        self.name = check_phase(name)
        self.label = label
        self.duration_s: float | None = None

    def __enter__(self) -> PhaseScope:
        run = context.current_run()
        attrs: dict[str, Any] = {A.PHASE: self.name}
        if self.label:
            attrs[A.PHASE_LABEL] = self.label
        if run is not None:
            attrs[A.RUN_ID] = run.id
            attrs[A.WORKFLOW] = run.workflow
        span = context.get_tracer().start_span(A.SPAN_PHASE.format(phase=self.name), attributes=attrs)
        span_token = otel_context.attach(trace.set_span_in_context(span))
        _push(self, (span, context.enter_phase(self.name), span_token, time.monotonic(), run))
        events.emit("on_phase_start", run, self.name, self.label)
        return self

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        span, phase_token, span_token, start, run = _pop(self)
        self.duration_s = time.monotonic() - start
        context.exit_phase(phase_token)
        otel_context.detach(span_token)
        _end_phase_span(span, exc)
        workflow = run.workflow if run is not None else context.default_workflow()
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
                    return await fn(*args, **kwargs)

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with PhaseScope(name, label):
                return fn(*args, **kwargs)

        return wrapper


def _end_phase_span(span: Span, exc: BaseException | None) -> None:
    """A phase that failed is marked with the error's type only: its message may quote content."""
    if exc is not None and not isinstance(exc, BudgetExhausted):
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.set_attribute(A.ERROR_TYPE, type(exc).__qualname__)
    span.end()


def approval(label: str = "Waiting for approval") -> PhaseScope:
    """Measure a human wait (an approval) as the ``approval`` phase."""
    return PhaseScope("approval", label)
