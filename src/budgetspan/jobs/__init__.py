"""Long work in the background: budgeted jobs on a task queue (Celery with Redis first).

A job's id is its run's id. Its budget, identity and trace context travel in the task's headers
(``spec``); the worker's run spends from the shared Redis ledger (``ledger``), so the budget is the
same whatever process or retry runs it; the live attempt holds a lease on the job (``lease``), so a
delivery of a job that is still running (a broker's visibility timeout passed) waits for it
instead of running it too. Cancellation works by job id from any process; milestones
go to a Redis stream per job (``store``), readable with ``budgetspan jobs watch JOB``; the end is
notified at least once with an idempotency key (``notify``). A queue adapter (``celery_queue``)
only sends, reads headers and revokes; the rest (``worker``) is the same for any queue.
"""

from __future__ import annotations

from budgetspan.jobs.ledger import JobLedger
from budgetspan.jobs.spec import JobSpec
from budgetspan.jobs.store import JobEnd, JobStore
from budgetspan.jobs.worker import cancel, checkpoint, current_job_id, execute, wait_for_end

__all__ = [
    "JobEnd",
    "JobLedger",
    "JobSpec",
    "JobStore",
    "cancel",
    "checkpoint",
    "current_job_id",
    "execute",
    "wait_for_end",
]
