"""The live runs of this process, by run id and by trace: cancel by id, find a run by its trace.

A thread or task that receives only the OpenTelemetry context (what OpenTelemetry's threading
instrumentation and several frameworks carry) still spends from the declared run of that trace.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from budgetspan.runs.run import Run

K = TypeVar("K")
_lock = threading.Lock()
_by_id: dict[str, list[Run]] = {}
_by_trace: dict[int, list[Run]] = {}


def add(run: Run, trace_id: int | None) -> None:
    with _lock:
        _by_id.setdefault(run.id, []).append(run)
        if trace_id:
            _by_trace.setdefault(trace_id, []).append(run)


def remove(run: Run, trace_id: int | None) -> None:
    with _lock:
        _drop(_by_id, run.id, run)
        if trace_id:
            _drop(_by_trace, trace_id, run)


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


def run_of_trace(trace_id: int) -> Run | None:
    """The innermost declared run started in this trace, if one is live."""
    with _lock:
        runs = _by_trace.get(trace_id)
        return runs[-1] if runs else None


def cancel(run_id: str) -> bool:
    """Cancel a live run by id; False if no such run is live."""
    run = get_run(run_id)
    return run.cancel() if run is not None else False
