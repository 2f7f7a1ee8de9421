"""A running attempt's watch for a cancel sent from another process.

Why: the cancel flag in the shared ledger stops the run at its next reservation, but an async
model call already in flight would run to its end (seconds, or minutes for a long generation)
and be paid for. The watch notices the cancel while the call is in flight and cancels the run
here (``run.cancel()``), which cancels the run's tracked async calls: the connection to the
provider is closed and the call ends as ``cancelled``.

It listens on the job's Redis channel (``JobStore.cancel_channel``: ``jobs.cancel`` publishes
there after setting the flag) and reads the flag once after subscribing and at every wake-up, so
a cancel published before the watch subscribed, or lost on a reconnect, is still seen. A sync
call in flight cannot be interrupted from another thread; it finishes and the next call is refused.
"""

from __future__ import annotations

import threading
from typing import Any

from budgetspan import events
from budgetspan.jobs.store import JobStore


class CancelWatch:
    """Watch ``job_id`` for a cancel while ``run`` is open; ``close()`` when the attempt ends."""

    def __init__(self, store: JobStore, job_id: str, run: Any, poll_s: float = 0.5) -> None:
        self.store, self.job_id, self.run, self.poll_s = store, job_id, run, poll_s
        self._stop = threading.Event()
        self._pubsub: Any = None
        self._thread = threading.Thread(target=self._watch, name=f"budgetspan-cancel-{job_id}", daemon=True)

    def start(self) -> CancelWatch:
        try:
            self._pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(self.store.cancel_channel(self.job_id))
        except Exception:
            events.internal_error("jobs.cancel_watch")
            self._pubsub = None  # the flag alone, read at every poll
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()  # the thread ends at its next wake-up and closes its connection

    def _wait(self) -> bool:
        """Block up to ``poll_s``; True when a cancel message came."""
        if self._pubsub is None:
            self._stop.wait(self.poll_s)
            return False
        return self._pubsub.get_message(timeout=self.poll_s) is not None

    def _watch(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    if self.store.cancel_requested(self.job_id):
                        if not self._stop.is_set():
                            self.run.cancel()
                        return
                    self._wait()
                except Exception:  # Redis went away: logged, then the flag alone, read at every poll
                    events.internal_error("jobs.cancel_watch")
                    self._unsubscribe()
                    self._stop.wait(self.poll_s)
        finally:
            self._unsubscribe()

    def _unsubscribe(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass


__all__ = ["CancelWatch"]
