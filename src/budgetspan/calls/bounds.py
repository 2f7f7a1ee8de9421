"""Bounding an awaited call: the run's wall clock (and a tool's timeout) as a timeout, and
``budgetspan.cancel`` as a cancellation, both turned into ``BudgetExhausted`` for the caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from budgetspan.accounting.budget import Limit
from budgetspan.accounting.ledger import Refusal
from budgetspan.events import internal_error

if TYPE_CHECKING:
    from budgetspan.runs.run import Run


class AsyncBounds:
    """What ``Call`` does for async calls and streams (it provides ``run``, ``_deadline``, ``_watch``)."""

    run: Run | None
    _deadline: float | None
    _watch: tuple[Any, Any, Any] | None

    def watch_stream(self) -> None:
        """An async stream: arm the run's deadline (one timer) and its cancellation for the task
        that consumes it, once; ``stream_stop`` says what a cancellation meant. Undone at the end."""
        try:
            run, task = self.run, asyncio.current_task()
            if run is None or task is None:
                return
            untrack = run.track_task(task)
            timer = None
            if self._deadline is not None:
                loop = task.get_loop()
                timer = loop.call_at(loop.time() + max(0.0, self._deadline - time.monotonic()), task.cancel)
            self._watch = (task, untrack, timer)
        except Exception:
            internal_error("Call.watch_stream")

    def stream_stop(self, error: BaseException) -> BaseException | None:
        """The ``BudgetExhausted`` a stream's cancellation stands for (the run's deadline passed or
        the run was cancelled), or None for any other error."""
        run, watch = self.run, self._watch
        if not isinstance(error, asyncio.CancelledError) or run is None or watch is None:
            return None
        if run.cancelled:
            refusal = Refusal(Limit.CANCELLED.value, None)
        elif self._deadline is not None and time.monotonic() >= self._deadline:
            refusal = Refusal(Limit.WALL_CLOCK_S.value, run.budget.max_wall_clock_s)
        else:
            return None
        watch[0].uncancel()
        return run.exhaust(refusal)

    def _unwatch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch[1]()
            if watch[2] is not None:
                watch[2].cancel()

    @asynccontextmanager
    async def deadline(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Bound an awaited call by the run's remaining wall-clock time (and ``timeout_s``).

        The run's deadline turns into BudgetExhausted(max_wall_clock_s); ``timeout_s`` into
        TimeoutError; ``budgetspan.cancel`` into RunCancelled.
        """
        run = self.run
        remaining = run.remaining_s() if run is not None else None
        limit = min((t for t in (remaining, timeout_s) if t is not None), default=None)
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not on asyncio (trio via anyio): no bound, rather than an error
            yield
            return
        untrack = run.track_task(task) if (run is not None and task is not None) else None
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError:
            by_run = remaining is not None and remaining <= (
                timeout_s if timeout_s is not None else float("inf")
            )
            if run is not None and by_run:
                raise run.exhaust(Refusal(Limit.WALL_CLOCK_S.value, run.budget.max_wall_clock_s)) from None
            raise
        except asyncio.CancelledError:
            if run is not None and run.cancelled and task is not None:
                task.uncancel()
                raise run.exhaust(Refusal(Limit.CANCELLED.value, None)) from None
            raise
        finally:
            if untrack is not None:
                untrack()
