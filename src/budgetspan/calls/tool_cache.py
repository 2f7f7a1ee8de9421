"""``@budgetspan.tool(cache=...)``: a tool whose results the cache may answer.

A miss is the tool call as usual (reserved, counted, timed out, retried) with the cache's
attributes on its span. A hit is an ``execute_tool`` span that says so, with no reservation: it
does not count against ``max_tool_calls`` or the tool's ``max_calls``, and is not a tool call in
the tool metrics (the cache metrics count it). A run that has stopped still refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.trace import SpanKind

from budgetspan import attributes as A
from budgetspan.cache.core import Outcome
from budgetspan.calls.call import Call
from budgetspan.events import internal_error
from budgetspan.runs import context
from budgetspan.runs.phases import DEFAULT_PHASE_BY_OPERATION


def serve_hit(name: str, read_only: bool) -> Callable[[Outcome], Any]:
    """Answer a hit: its span, and the result kept in the run's partial results."""

    def serve(outcome: Outcome) -> Any:
        assert outcome.entry is not None
        value = outcome.entry.value
        run = context.current_run()
        try:
            attrs: dict[str, Any] = {
                A.GEN_AI_OPERATION_NAME: A.OP_EXECUTE_TOOL,
                A.GEN_AI_TOOL_NAME: name,
                A.PHASE: context.current_phase() or DEFAULT_PHASE_BY_OPERATION.get(A.OP_EXECUTE_TOOL, ""),
                **outcome.attributes(),
            }
            if read_only:
                attrs[A.READ_ONLY] = True
            if run is not None:
                attrs[A.RUN_ID] = run.id
                attrs[A.WORKFLOW] = run.workflow
            span = context.get_tracer().start_span(
                A.SPAN_TOOL.format(tool=name), kind=SpanKind.INTERNAL, attributes=attrs
            )
            span.end()
        except Exception:
            internal_error("cache hit span")
        if run is not None:
            run.record_tool_result(name, value)
        return value

    return serve


def note_outcome(call: Call, outcome: Outcome) -> None:
    """The cache's attributes on a miss's tool span (written with the results when it ends)."""
    try:
        call.attributes.update(outcome.attributes())
    except Exception:
        internal_error("cache attributes")


__all__ = ["note_outcome", "serve_hit"]
