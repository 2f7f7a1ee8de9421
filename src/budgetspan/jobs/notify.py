"""The end-of-job notification: at least once, with an idempotency key the receiver dedupes on.

The target travels with the job: ``"package.module:function"`` (called in the worker with the
``JobEnd``) or an ``http(s)://`` URL (POSTed the ``JobEnd`` as JSON with an ``Idempotency-Key``
header). The end is recorded in Redis before it is delivered and ``notified`` is set only after a
delivery succeeds, so a worker that dies in between leaves it pending: the redelivered task finds
the job ended and delivers it again (the same key).
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import urllib.request

from budgetspan.events import log_failure
from budgetspan.jobs.store import JobEnd, JobStore

log = logging.getLogger(__name__)


def _send(target: str, end: JobEnd) -> None:
    if target.startswith(("http://", "https://")):
        body = json.dumps(end.as_dict(), default=repr).encode()
        request = urllib.request.Request(
            target,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": end.idempotency_key},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        return
    module, _, name = target.partition(":")
    callback = getattr(importlib.import_module(module), name)
    callback(end)


def deliver(store: JobStore, target: str | None, end: JobEnd, tries: int = 3) -> bool:
    """Deliver ``end`` to ``target`` (retrying), then mark the job notified. False if it failed."""
    if store.notified(end.job_id):
        return True
    for attempt in range(tries):
        try:
            if target:
                _send(target, end)
            store.mark_notified(end.job_id)
            return True
        except Exception:
            # The error's type only: a callback's text may quote the job's content.
            log_failure(
                log,
                "budgetspan: notifying the end of job %s failed (try %d of %d)",
                end.job_id,
                attempt + 1,
                tries,
            )
            time.sleep(0.2 * 2**attempt)
    return False


def deliver_pending(store: JobStore, target: str | None, job_id: str) -> bool:
    """Deliver a recorded end not yet notified (a redelivered or revoked task's message)."""
    end = store.ended(job_id)
    if end is None:
        return False
    return deliver(store, target, end)


__all__ = ["deliver", "deliver_pending"]
