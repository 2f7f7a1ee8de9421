"""The Celery adapter: budgeted jobs on a Celery app (Redis broker first).

    app = Celery("tickets", broker="redis://...")
    jobs = CeleryJobs(app, redis.Redis.from_url("redis://..."))   # the ledger's Redis

    @jobs.task(name="tickets.triage")
    def triage(ticket: str) -> str: ...                            # runs in budgetspan.run(run_id=job id)

    job_id = jobs.submit(triage, "T-1", workflow="triage", budget="background", notify="app.hooks:on_end")
    jobs.cancel(job_id)                                            # from any process

The adapter only does what is Celery's: send with the job's headers and ``task_id=job_id``, read
them back in the worker, revoke. Everything else is queue-independent (``jobs.worker``), so RQ, arq
or Dramatiq need the same three things. Tasks are acknowledged late and rejected when the worker is
lost, so the broker delivers a task again when its worker dies (with Redis, after the
``visibility_timeout``, which should exceed the longest job and countdown). Delivery is at least
once; a job runs one attempt at a time: a delivery that comes while an attempt is live (the Redis
broker's visibility timeout passed) waits for it, under the attempt's lease (``jobs.lease``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from budgetspan import events
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import Mode
from budgetspan.jobs import worker
from budgetspan.jobs.ledger import JobLedger
from budgetspan.jobs.notify import deliver_pending
from budgetspan.jobs.spec import H_JOB, JobSpec
from budgetspan.jobs.store import DEFAULT_LEASE_S, JobStore

#: What a worker needs for "a dead worker's task is delivered again" (merged into the app's conf).
RECOMMENDED_CONF: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}


def _headers(request: Any) -> dict[str, Any]:
    """The custom headers of the message being run (Celery keeps them on the request)."""
    found = dict(getattr(request, "headers", None) or {})
    for name, value in vars(request).items():
        if name.startswith("budgetspan-") or name in ("traceparent", "tracestate", "baggage"):
            found.setdefault(name, value)
    return found


def _retried_by(task: Any) -> Callable[[BaseException], bool]:
    """Whether Celery's ``autoretry_for`` will run the task again after this error (its retries
    left, ``dont_autoretry_for`` respected): the job then goes on with the same run and budget."""
    auto = tuple(getattr(task, "autoretry_for", ()) or ())
    dont = tuple(getattr(task, "dont_autoretry_for", ()) or ())
    limit = getattr(task, "max_retries", None)
    left = limit is None or int(getattr(task.request, "retries", 0) or 0) < int(limit)

    def retried(exc: BaseException) -> bool:
        return bool(auto) and left and isinstance(exc, auto) and not isinstance(exc, dont)

    return retried


class CeleryJobs:
    """Budgeted jobs on ``app``; ``client`` is the ``redis.Redis`` of the shared ledger and job state."""

    def __init__(
        self,
        app: Any,
        client: Any,
        *,
        ledger_options: Mapping[str, Any] | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        """``lease_s``: how long a running attempt's lease lasts unrenewed (``jobs.lease``): the
        wait before a dead attempt's job is taken over by its next delivery."""
        from celery import signals

        self.app = app
        self.client = client
        self.store = JobStore(client, lease_s=lease_s)
        self._ledger_options = dict(ledger_options or {})
        self._ledger: JobLedger | None = None
        self._functions: dict[str, Callable[..., Any]] = {}
        for key, value in RECOMMENDED_CONF.items():
            app.conf.setdefault(key, value)
        signals.task_revoked.connect(self._on_revoked, weak=False)
        signals.task_failure.connect(self._on_failure, weak=False)

    # the worker ----------------------------------------------------------------------------------
    def ledger(self) -> JobLedger:
        """This process's shared ledger (made on first use; ``execute`` makes it the current one)."""
        if self._ledger is None:
            self._ledger = JobLedger(self.client, self.store, **self._ledger_options)
        return self._ledger

    def task(self, name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Any]:
        """Register ``fn`` as a Celery task whose every run is a budgeted job attempt."""

        def register(fn: Callable[..., Any]) -> Any:
            @functools.wraps(fn)
            def run_job(task: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    spec = JobSpec.from_headers(_headers(task.request))
                except KeyError:  # sent without submit(): an ordinary call, unbudgeted here
                    return fn(*args, **kwargs)
                end = worker.execute(spec, fn, args, kwargs, self.ledger(), _retried_by(task))
                return None if end is None else end.outcome

            opts = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True, **options}
            task = self.app.task(bind=True, name=name or f"{fn.__module__}.{fn.__qualname__}", **opts)(
                run_job
            )
            self._functions[task.name] = fn
            return task

        return register

    def _on_revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        """A revoked message is dropped by the worker without running: deliver its notification."""
        if request is None:
            return
        try:
            spec = JobSpec.from_headers(_headers(request))
        except KeyError:
            return
        deliver_pending(self.store, spec.notify, spec.job_id)

    def _on_failure(
        self, sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
    ) -> None:
        """A hard time limit killed the pool process running a job: Celery acknowledges the task
        (no retry) and says so only here, in the worker's parent. End the job there."""
        from celery.exceptions import TimeLimitExceeded

        if task_id is None or not isinstance(exception, TimeLimitExceeded) or sender is None:
            return
        if getattr(sender, "name", None) not in self._functions:
            return
        try:
            # (a ledger of its own: the pool forks its next processes from this one)
            worker.abandon(JobLedger(self.client, self.store, **self._ledger_options), task_id, exception)
        except Exception:
            events.internal_error("jobs.time_limit")

    # any process ---------------------------------------------------------------------------------
    def submit(
        self,
        task: Any,
        *args: Any,
        workflow: str | None = None,
        budget: Budget | str | Mapping[str, Any] | None = None,
        mode: Mode | str | None = None,
        notify: str | None = None,
        job_id: str | None = None,
        task_kwargs: Mapping[str, Any] | None = None,
        identity: Mapping[str, Any] | None = None,
        **send_options: Any,
    ) -> str:
        """Send ``task(*args, **task_kwargs)`` as a job; returns its job id (= run id = task id).
        ``identity``: ``tenant``, ``user``, ``permissions``, ``conversation_id`` of the job's run
        (default: the submitting run's)."""
        spec = JobSpec.new(
            workflow or task.name, budget, mode, notify=notify, job_id=job_id, **dict(identity or {})
        )
        worker.submitted(self.store, spec)
        task.apply_async(
            args=args,
            kwargs=dict(task_kwargs or {}),
            task_id=spec.job_id,
            headers=spec.headers(),
            **send_options,
        )
        return spec.job_id

    def cancel(self, job_id: str) -> str:
        """Cancel by job id: revoke the message if queued, stop the run at its next call if running."""
        before = worker.cancel(self.store, job_id)
        if before in ("queued", "unknown"):
            self.app.control.revoke(job_id)
        return before

    def watch(self, job_id: str, timeout_s: float | None = None) -> Any:
        return self.store.watch(job_id, timeout_s)


__all__ = ["H_JOB", "RECOMMENDED_CONF", "CeleryJobs"]
