"""The run a call is accounted to when no run was declared around it.

In order: the declared run current in this context; the declared run of this trace (a thread
that received only the OpenTelemetry context); an implicit run per trace (an inbound request);
an implicit run for the whole process (a script).
"""

from __future__ import annotations

import atexit
import threading
from collections import OrderedDict

from opentelemetry import trace

from budgetspan.config import get_config
from budgetspan.runs import context, registry
from budgetspan.runs.run import Run

_lock = threading.Lock()
_trace_runs: OrderedDict[int, Run] = OrderedDict()
_MAX_TRACE_RUNS = 10_000  # implicit runs whose root span was never seen end by eviction
_process_run: Run | None = None


def resolve_run() -> Run:
    """The run a call is accounted to: declared, else the trace's, else the process's."""
    run = context.current_run()
    if run is not None:
        return run
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        declared = registry.run_of_trace(ctx.trace_id)
        return declared if declared is not None else _trace_run(ctx.trace_id)
    return _get_process_run()


def _new_implicit_run() -> Run:
    cfg = get_config()
    workflow = context.default_workflow()
    run = Run(workflow, cfg.budget_for(workflow), cfg.mode, implicit=True)
    run._start(with_span=False)
    return run


def _trace_run(trace_id: int) -> Run:
    with _lock:
        run = _trace_runs.get(trace_id)
        if run is not None:
            return run
    run = _new_implicit_run()
    evicted: list[Run] = []
    with _lock:
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
    with _lock:
        run = _trace_runs.pop(trace_id, None)
    if run is not None:
        if error:
            run.fail()
        run._end(None)


def has_trace_runs() -> bool:
    return bool(_trace_runs)


def has_trace_run(trace_id: int) -> bool:
    return trace_id in _trace_runs


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
