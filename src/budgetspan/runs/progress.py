"""Progress for applications: a run's milestones, in words a user would understand.

A milestone is a phase change or the start of a tool call or retrieval, with a readable label
("Searching policy", "Checking order status", "Waiting for approval"), and the run's end. Model
calls appear only when the code gave them a label: "calling model 3" is not progress. Calls made
inside another call (an instrumented client inside a tool) are left out, and a label repeated
back to back within a run is reported once.

    def show(m: budgetspan.Milestone) -> None:
        print(f"{m.elapsed_s:5.1f}s  {m.label}")

    with budgetspan.subscribe_progress(show, run=run.id):
        ...

    async with budgetspan.subscribe_progress(run=run) as progress:   # or iterate, e.g. to stream
        async for m in progress:                                      # to a browser; ends with
            await send(m.label)                                       # the run

Callbacks run synchronously in the thread that reached the milestone; keep them quick. An error
in a callback is logged and never reaches the run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from budgetspan import events
from budgetspan.runs import context
from budgetspan.runs.run import Run

log = logging.getLogger(__name__)

# What a phase is called when the code gave it no label.
PHASE_LABELS: dict[str, str] = {
    "context_assembly": "Gathering context",
    "model_decision": "Thinking",
    "tool_execution": "Running tools",
    "verification": "Checking the answer",
    "approval": "Waiting for approval",
    "final_response": "Writing the response",
}

END_LABELS: dict[str, str] = {
    "success": "Done",
    "failure": "Failed",
    "escalated": "Handed over to a person",
    "budget_exhausted": "Stopped at its budget",
    "cancelled": "Cancelled",
    "needs_clarification": "Asked for clarification",
}


@dataclass(frozen=True)
class Milestone:
    """One step a user would care about."""

    label: str
    kind: str  # "phase" | "tool" | "retrieval" | "model" | "end"
    run_id: str | None
    workflow: str | None
    phase: str | None
    elapsed_s: float  # since the run started (since subscribing, outside any run)
    outcome: str | None = None  # set on "end"


def _tool_label(name: str) -> str:
    for prefix in ("execute_tool ", "retrieval "):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


class ProgressSubscription:
    """A live subscription; ``close()`` (or leaving the ``with`` block) stops it.

    Without a callback, milestones are collected in ``milestones`` and can be consumed with
    ``async for`` (from any thread's milestones); iterating a one-run subscription ends after
    that run's end milestone, any other ends at ``close()``.
    """

    def __init__(
        self,
        callback: Callable[[Milestone], Any] | None = None,
        *,
        run: Run | str | None = None,
        workflow: str | None = None,
    ) -> None:
        self.callback = callback
        self.run_id = run.id if isinstance(run, Run) else run
        self.workflow = workflow
        self.milestones: list[Milestone] = []
        self._last: dict[str | None, str] = {}
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._failed = False
        self._closed = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        events.add_listener(self)

    # subscription ----------------------------------------------------------------------
    def close(self) -> None:
        events.remove_listener(self)
        with self._lock:
            self._closed = True
        self._wake()

    def __enter__(self) -> ProgressSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ProgressSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Milestone]:
        if self.callback is not None:
            raise TypeError("a subscription with a callback delivers there; subscribe without one to iterate")
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Milestone]:
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.append(waiter)
        seen = 0
        try:
            while True:
                waiter[1].clear()
                with self._lock:
                    batch = self.milestones[seen:]
                    closed = self._closed
                seen += len(batch)
                for m in batch:
                    yield m
                    if m.kind == "end" and self.run_id is not None:
                        return
                if closed:
                    return
                if not batch:
                    await waiter[1].wait()
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed
                pass

    def _wanted(self, run: Run | None) -> bool:
        if self.run_id is not None and (run is None or run.id != self.run_id):
            return False
        return self.workflow is None or (run is not None and run.workflow == self.workflow)

    def _emit(
        self, run: Run | None, kind: str, label: str, phase: str | None, outcome: str | None = None
    ) -> None:
        key = run.id if run is not None else None
        with self._lock:
            if kind != "end" and self._last.get(key) == label:
                return  # the same milestone again, back to back
            if kind == "end":
                self._last.pop(key, None)
            else:
                self._last[key] = label
        start = run.started_at if run is not None else self._t0
        m = Milestone(
            label=label,
            kind=kind,
            run_id=key,
            workflow=run.workflow if run is not None else None,
            phase=phase,
            elapsed_s=max(0.0, time.monotonic() - start),
            outcome=outcome,
        )
        if self.callback is None:
            with self._lock:
                self.milestones.append(m)
            self._wake()
            return
        try:
            self.callback(m)
        except Exception:
            if not self._failed:  # log once, not on every milestone
                self._failed = True
                events.log_failure(
                    log, "budgetspan: a progress callback failed (later failures are not logged)"
                )

    # events listener -------------------------------------------------------------------
    def on_phase_start(self, run: Run | None, phase: str, label: str | None) -> None:
        if self._wanted(run):
            self._emit(run, "phase", label or PHASE_LABELS.get(phase, phase), phase)

    def on_call_start(self, kind: str, name: str, run: Run | None, phase: str, label: str | None) -> None:
        if not self._wanted(run) or context.current_call() is not None:
            return  # nested inside another call: the outer call is the milestone
        if kind == "model":
            if label:
                self._emit(run, "model", label, phase)
        elif kind == "tool":
            self._emit(run, "tool", label or f"Running {_tool_label(name)}", phase)
        elif kind == "retrieval":
            self._emit(run, "retrieval", label or f"Searching {_tool_label(name)}", phase)

    def on_run_end(self, run: Run) -> None:
        if self._wanted(run):
            outcome = run.outcome.value if run.outcome is not None else None
            self._emit(run, "end", END_LABELS.get(outcome or "", "Finished"), None, outcome)


def subscribe_progress(
    callback: Callable[[Milestone], Any] | None = None,
    *,
    run: Run | str | None = None,
    workflow: str | None = None,
) -> ProgressSubscription:
    """Receive the milestones of one run (``run``: a Run or its id), a workflow's, or all runs'."""
    return ProgressSubscription(callback, run=run, workflow=workflow)


__all__ = ["END_LABELS", "PHASE_LABELS", "Milestone", "ProgressSubscription", "subscribe_progress"]
