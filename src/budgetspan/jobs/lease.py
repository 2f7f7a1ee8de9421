"""The live attempt's lease on its job: how a second delivery of a running job is told from the
retry of a dead one.

Why: a broker delivers a task again when its acknowledgement is late, not only when its worker
died: Celery's Redis broker does so after the ``visibility_timeout``, also to a job still running
(longer than the timeout) or still waiting for its ``countdown``/``eta``. Without a lease the
second delivery took the first for dead: it gave back the first's reservations in flight and ran
the steps again (4 requests sent under ``max_model_calls=3``). With it, the attempt that starts
takes the lease (``JobStore.begin``) and a thread here renews it every third of ``lease_s`` until
the attempt's end is notified; a delivery that finds it held waits (``worker.execute``) until the
job has ended (then it only delivers a pending notification) or the lease has expired (its holder
died: it takes over as the next attempt, as before). Waiting, not refusing: the broker took the
first delivery back when it delivered the message again (its unacknowledged entry is now the
duplicate's), so the duplicate is the only copy the broker can deliver again; acknowledged and
dropped, a job whose live attempt then died would never run again.

A holder that cannot renew in time (a process frozen, or cut off from Redis, for longer than
``lease_s``) loses the lease if a waiting delivery took over meanwhile (this one says so in a
warning); if none did, its next renewal takes the lease back (also after Redis restarted empty).
"""

from __future__ import annotations

import logging
import threading

from budgetspan import events
from budgetspan.jobs.store import JobStore

log = logging.getLogger(__name__)


class Lease:
    """``owner``'s lease on ``job_id``, taken by ``JobStore.begin``: renewed until ``close()``."""

    def __init__(self, store: JobStore, job_id: str, owner: str) -> None:
        self.store, self.job_id, self.owner = store, job_id, owner
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"budgetspan-lease-{job_id}", daemon=True)

    def start(self) -> Lease:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop renewing and give the lease up: a later delivery of the job need not wait. (The
        renewal in flight first: it would take the lease back once given up.)"""
        self._stop.set()
        self._thread.join(self.store.lease_s)
        try:
            self.store.release_lease(self.job_id, self.owner)
        except Exception:
            events.internal_error("jobs.lease")  # it expires by itself after lease_s

    def _renew(self) -> None:
        while not self._stop.wait(self.store.lease_s / 3):
            try:
                if self.store.renew_lease(self.job_id, self.owner):
                    continue
            except Exception:  # Redis unreachable: try again at the next beat
                events.internal_error("jobs.lease")
                continue
            if not self._stop.is_set():
                self.lost = True
                log.warning(
                    "budgetspan: job %s lost its lease (not renewed within %.1f s); another delivery "
                    "of the job may run it too",
                    self.job_id,
                    self.store.lease_s,
                )
            return


__all__ = ["Lease"]
