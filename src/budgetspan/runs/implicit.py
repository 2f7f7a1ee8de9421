"""The run a call is accounted to when no run was declared around it.

In order: the declared run current in this context; the declared run of this trace (a thread
that received only the OpenTelemetry context); an implicit run per local root span of a trace (an
inbound request: its server span, whose parent is remote or absent); an implicit run for the whole
process (a script).

Requests of one upstream trace (a gateway or an orchestrator fanning out with one ``traceparent``)
are separate requests, each with its own budget: a span is marked at its start with the span id of
its local root (``note_span_start``), and the implicit run is kept by (trace, local root). A span
the processor did not see start has no mark: its run is kept by the trace alone, as before.
"""

from __future__ import annotations

import atexit
import threading
from collections import OrderedDict
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context

from budgetspan.config import get_config
from budgetspan.runs import context, registry
from budgetspan.runs.run import Run

_lock = threading.Lock()
#: (trace id, local root span id or None where unknown) -> the implicit run of that request
_trace_runs: OrderedDict[tuple[int, int | None], Run] = OrderedDict()
_first_root: dict[int, int] = {}  # trace id -> the local root of its first marked implicit run
_MAX_TRACE_RUNS = 10_000  # implicit runs whose root span was never seen end by eviction
_process_run: Run | None = None


def resolve_run() -> Run:
    """The run a call is accounted to: declared, else the trace's, else the process's."""
    run = context.current_run()
    if run is not None:
        return run
    span = trace.get_current_span()
    ctx = span.get_span_context()
    if ctx.is_valid:
        root = registry.local_root(span)
        declared = registry.run_of_trace(ctx.trace_id, root)
        return declared if declared is not None else _trace_run((ctx.trace_id, root))
    return _get_process_run()


def note_span_start(span: Any, parent_context: Context | None) -> None:
    """Mark ``span`` (an SDK span, just started) with the span id of its local root: its own
    when its parent is remote or absent, else its local parent's mark (none when the parent was
    not marked)."""
    parent = span.parent
    if parent is None or parent.is_remote:
        root = span.get_span_context().span_id
    else:
        root = registry.local_root(trace.get_current_span(parent_context))
        if root is None:
            return
    setattr(span, registry.LOCAL_ROOT, root)


def _new_implicit_run() -> Run:
    cfg = get_config()
    workflow = context.default_workflow()
    run = Run(workflow, cfg.budget_for(workflow), cfg.mode, implicit=True)
    run._start(with_span=False)
    return run


def _find(trace_id: int, root: int | None) -> Run | None:
    """The implicit run of (trace, root); a span without a mark (a provider budgetspan's processor
    is not on) and a marked one of the same trace share one run, never split a request's budget
    (under ``_lock``)."""
    run = _trace_runs.get((trace_id, root))
    if run is not None:
        return run
    if root is not None:
        return _trace_runs.get((trace_id, None))
    first = _first_root.get(trace_id)
    return None if first is None else _trace_runs.get((trace_id, first))


def _trace_run(key: tuple[int, int | None]) -> Run:
    with _lock:
        run = _find(*key)
        if run is not None:
            return run
    run = _new_implicit_run()
    evicted: list[Run] = []
    with _lock:
        existing = _find(*key)
        if existing is not None:
            evicted.append(run)  # lost a race: end our duplicate quietly
            run = existing
        else:
            _trace_runs[key] = run
            if key[1] is not None:
                _first_root.setdefault(key[0], key[1])
            while len(_trace_runs) > _MAX_TRACE_RUNS:
                (trace_id, root), old = _trace_runs.popitem(last=False)
                if root is not None and _first_root.get(trace_id) == root:
                    del _first_root[trace_id]
                evicted.append(old)
    for old in evicted:
        old._end(None)
    return run


def end_trace_run(trace_id: int, span_id: int, error: bool = False) -> None:
    """A local root span of a trace ended: its implicit run ends too, and the trace's run kept
    for spans without a mark."""
    with _lock:
        runs = [_trace_runs.pop((trace_id, key), None) for key in (span_id, None)]
        if _first_root.get(trace_id) == span_id:
            del _first_root[trace_id]
    for run in runs:
        if run is not None:
            if error:
                run.fail()
            run._end(None)


def has_trace_runs() -> bool:
    return bool(_trace_runs)


def has_trace_run(trace_id: int, span_id: int) -> bool:
    return (trace_id, span_id) in _trace_runs or (trace_id, None) in _trace_runs


def _get_process_run() -> Run:
    global _process_run
    run = _process_run
    if run is None or run.ended:
        with _lock:
            if _process_run is None or _process_run.ended:
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
