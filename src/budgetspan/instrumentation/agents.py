"""What the agent-framework instrumentations share: the agent's span, handoffs, and refusals that
a framework must not swallow.

An agent invocation is an ``invoke_agent {agent}`` span (``gen_ai.operation.name=invoke_agent``,
``gen_ai.agent.name``) inside the run; it is not a call and is counted by no limit. Handoffs are
events on the span of the agent that hands off. Frameworks catch exceptions raised in tools and
turn them into messages for the model, or retry them: ``stopped_run()`` tells a wrapper that the
run it serves has stopped at a limit, so it can raise the run's ``BudgetExhausted`` where the
framework would otherwise carry on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from budgetspan import attributes as A
from budgetspan.accounting.budget import BudgetExhausted
from budgetspan.events import internal_error
from budgetspan.runs import context, implicit
from budgetspan.runs.run import Run


def _start_span(agent: str, framework: str) -> Span | None:
    try:
        run = context.current_run()
        attrs: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_AGENT,
            A.GEN_AI_AGENT_NAME: agent,
            A.AGENT_FRAMEWORK: framework,
        }
        if run is not None:
            attrs[A.RUN_ID] = run.id
            attrs[A.WORKFLOW] = run.workflow
        return context.get_tracer().start_span(
            A.SPAN_AGENT.format(agent=agent), kind=SpanKind.INTERNAL, attributes=attrs
        )
    except Exception:
        internal_error("agent span")
        return None


def _end_span(span: Span | None, error: BaseException | None) -> None:
    if span is None:
        return
    try:
        if error is not None and not isinstance(error, BudgetExhausted):
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.set_attribute(A.ERROR_TYPE, type(error).__qualname__)
        span.end()
    except Exception:
        internal_error("agent span end")


@contextmanager
def agent_span(agent: str, framework: str) -> Iterator[Span | None]:
    """One agent invocation, current for the block (its model and tool calls are its children)."""
    span = _start_span(agent, framework)
    token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
    error: BaseException | None = None
    try:
        yield span
    except BaseException as e:
        error = e
        raise
    finally:
        if token is not None:
            otel_context.detach(token)
        _end_span(span, error)


def record_handoff(source: str | None, target: str | None) -> None:
    """Control passed from one agent to another: an event on the current span."""
    try:
        span = trace.get_current_span()
        span.add_event(A.EVENT_HANDOFF, {A.HANDOFF_FROM: source or "", A.HANDOFF_TO: target or ""})
    except Exception:
        internal_error("handoff event")


def stopped_run() -> BudgetExhausted | None:
    """The exception of the current run (or an enclosing one) if it has stopped at a limit."""
    try:
        run: Run | None = implicit.resolve_run()
    except Exception:
        internal_error("stopped_run")
        return None
    while run is not None:
        if run.exhausted is not None:
            return run.exhausted
        run = run.parent
    return None


def budget_error(error: BaseException | None) -> BudgetExhausted | None:
    """``error`` or the first ``BudgetExhausted`` in its cause/context chain or, for an exception
    group (parallel tools in a task group), in its members' (frameworks wrap it)."""
    todo, seen = [error], 0
    while todo and seen < 64:
        error = todo.pop(0)
        if error is None:
            continue
        seen += 1
        if isinstance(error, BudgetExhausted):
            return error
        if isinstance(error, BaseExceptionGroup):
            todo.extend(error.exceptions)
        todo.append(error.__cause__ or error.__context__)
    return None


def raise_refusal(error: BaseException) -> None:
    """Raise the ``BudgetExhausted`` wrapped in ``error``, or the run's own if it has stopped at a
    limit; return (the caller re-raises ``error``) when there is none or ``error`` is it."""
    inner = budget_error(error)
    if inner is not None:
        if inner is not error:
            raise inner from None  # (its traceback runs from the tool or model call that was refused)
        return
    stopped = stopped_run()
    if stopped is not None:
        raise stopped from error
