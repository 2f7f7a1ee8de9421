"""``@budgetspan.tool(cache=...)``: a tool whose results the cache may answer.

A miss is the tool call as usual (reserved, counted, timed out, retried) with the cache's
attributes on its span. A hit is a ``cached {tool}`` span, with no reservation: it
does not count against ``max_tool_calls`` or the tool's ``max_calls``, and is not a tool call in
the tool metrics (the cache metrics count it). A run that has stopped still refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from budgetspan import attributes as A
from budgetspan.cache.core import Outcome
from budgetspan.cache.wrap import hit_span
from budgetspan.calls.call import Call
from budgetspan.events import internal_error
from budgetspan.runs import context


def serve_hit(name: str, read_only: bool) -> Callable[[Outcome], Any]:
    """Answer a hit: a ``cached {tool}`` span (not an ``execute_tool`` one: no tool ran, nothing
    was reserved, and no report or collector should count it as a tool call), and the result
    kept in the run's partial results."""
    extra: dict[str, Any] = {A.GEN_AI_TOOL_NAME: name}
    if read_only:
        extra[A.READ_ONLY] = True

    def serve(outcome: Outcome) -> Any:
        assert outcome.entry is not None
        hit_span(name, outcome, extra)
        value = outcome.entry.value
        run = context.current_run()
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
