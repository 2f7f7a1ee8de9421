"""The live runs of this process, by run id and by trace: cancel by id, find a run by its trace.

A thread or task that receives only the OpenTelemetry context (what OpenTelemetry's threading
instrumentation and several frameworks carry) still spends from the declared run of that trace,
and of its request: requests of one upstream trace (one ``traceparent``) are told apart by their
local root span, whose id the processor marks each span with (``LOCAL_ROOT``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from budgetspan.runs.run import Run

K = TypeVar("K")
_lock = threading.Lock()
_by_id: dict[str, list[Run]] = {}
_by_trace: dict[int, list[Run]] = {}
_roots: dict[int, int] = {}  # id(run) -> the local root span id its span was marked with

#: The attribute a span carries: the span id of its local root (``implicit.note_span_start``).
LOCAL_ROOT = "_budgetspan_local_root"


def local_root(span: Any) -> int | None:
    """The span id of ``span``'s local root, when the processor marked it."""
    return getattr(span, LOCAL_ROOT, None)


def add(run: Run, trace_id: int | None, root: int | None = None) -> None:
    with _lock:
        _by_id.setdefault(run.id, []).append(run)
        if trace_id:
            _by_trace.setdefault(trace_id, []).append(run)
            if root is not None:
                _roots[id(run)] = root


def remove(run: Run, trace_id: int | None) -> None:
    with _lock:
        _drop(_by_id, run.id, run)
        if trace_id:
            _drop(_by_trace, trace_id, run)
            _roots.pop(id(run), None)


def _drop(table: dict[K, list[Run]], key: K, run: Run) -> None:
    runs = table.get(key)
    if runs is None:
        return
    if run in runs:
        runs.remove(run)
    if not runs:
        del table[key]


def live_runs() -> list[Run]:
    """Every declared or implicit run of this process that has not ended."""
    with _lock:
        return [run for runs in _by_id.values() for run in runs]


def get_run(run_id: str) -> Run | None:
    with _lock:
        runs = _by_id.get(run_id)
        return runs[-1] if runs else None


def run_of_trace(trace_id: int, root: int | None = None) -> Run | None:
    """The innermost declared run started in this trace (in the request of local root ``root``,
    where both are known), if one is live."""
    with _lock:
        for run in reversed(_by_trace.get(trace_id, ())):
            theirs = _roots.get(id(run))
            if root is None or theirs is None or theirs == root:
                return run
        return None


def cancel(run_id: str) -> bool:
    """Cancel a live run by id; False if no such run is live."""
    run = get_run(run_id)
    return run.cancel() if run is not None else False
