"""Running one attempt of a job, whatever queue delivered it: the queue adapter reads the
``JobSpec`` from the message headers and calls ``execute``.

An attempt: start it in the store, taking the job's lease (``jobs.lease``; a delivery that finds
another attempt live waits for it; skipped when the job was cancelled or has ended: then only a
pending notification is delivered), enter the W3C trace context that came with the job, run the
function inside ``budgetspan.run(..., run_id=job_id)`` on the shared ledger, publish its milestones
to the job's stream, record the end, notify.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import BudgetExhausted, Usage
from budgetspan.config import capture_content
from budgetspan.jobs.cancel_watch import CancelWatch
from budgetspan.jobs.lease import Lease
from budgetspan.jobs.ledger import JobLedger
from budgetspan.jobs.notify import deliver, deliver_pending
from budgetspan.jobs.spec import JobSpec
from budgetspan.jobs.store import JobEnd, JobStore
from budgetspan.runs import context
from budgetspan.runs.progress import Milestone, subscribe_progress
from budgetspan.runs.run import Run
from budgetspan.runs.scopes import RunScope

T = TypeVar("T")
log = logging.getLogger(__name__)
_current: ContextVar[tuple[JobStore, str] | None] = ContextVar("budgetspan_job", default=None)


def current_job_id() -> str | None:
    """The id of the job this code runs in (None outside a job)."""
    current = _current.get()
    return None if current is None else current[1]


def checkpoint(step: str, compute: Callable[[], T]) -> T:
    """``compute()`` once per job: a retried task gets the saved result (JSON) without redoing the
    step, so the model calls of finished steps are neither sent nor charged again. Outside a job,
    just ``compute()``."""
    current = _current.get()
    if current is None:
        return compute()
    store, job_id = current
    value, _ = store.checkpoint(job_id, step, compute)
    return value  # type: ignore[no-any-return]


def execute(
    spec: JobSpec,
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    ledger: JobLedger,
    retry: Callable[[BaseException], bool] | None = None,
) -> JobEnd | None:
    """One attempt of the job; its end (None when the job was cancelled or had ended before).
    ``retry``: whether the queue will run the job again after this error (Celery's
    ``autoretry_for``): then the error is raised, no end is recorded, and the run's record is
    kept for the next attempt, which goes on with the same budget."""
    store = ledger.store
    if context.get_ledger() is not ledger:
        context.set_ledger(ledger)  # the worker's runs spend from the shared ledger
    owner = uuid.uuid4().hex
    status, attempt, wait = _begin(store, spec, owner)
    if status != "go":
        deliver_pending(store, spec.notify, spec.job_id)
        return None
    lease = Lease(store, spec.job_id, owner).start()  # held until the end is notified
    try:
        events.emit("on_job_state", spec.workflow, "running" if attempt == 1 else "retried")
        token = otel_context.attach(propagate.extract(dict(spec.trace)))
        try:
            if attempt == 1 and wait is not None:
                _queue_delay(spec, wait)
            end = _attempt(spec, fn, args, kwargs, ledger, attempt, wait, retry)
        finally:
            otel_context.detach(token)
        if store.end(end):
            events.emit("on_job_state", spec.workflow, end.outcome)
        deliver(store, spec.notify, store.ended(spec.job_id) or end)
    finally:
        lease.close()
    return end


def _begin(store: JobStore, spec: JobSpec, owner: str) -> tuple[str, int, float | None]:
    """Start an attempt as ``owner``. A delivery of a job whose live attempt holds the lease is a
    duplicate (the broker's visibility timeout passed while the job ran or waited for its
    countdown): it waits until the job ends or the lease expires (the holder died: it takes over),
    counted once in the job hash and in ``budgetspan_jobs_total{state="duplicate"}``."""
    status, attempt, wait = store.begin(spec.job_id, owner)
    if status == "busy":
        log.warning(
            "budgetspan: job %s delivered again while an attempt runs it (a visibility timeout "
            "shorter than the job or its countdown?): this delivery waits for that attempt",
            spec.job_id,
        )
        events.emit("on_job_state", spec.workflow, "duplicate")
    noted = False
    while status == "busy":
        try:
            if not noted:
                noted = bool(store.note_duplicate(spec.job_id))
            time.sleep(min(1.0, store.lease_s / 4))
            status, attempt, wait = store.begin(spec.job_id, owner)
        except Exception:  # Redis unreachable a moment: this delivery may be the job's only copy
            events.internal_error("jobs.duplicate_wait")
            time.sleep(min(1.0, store.lease_s / 4))
    return status, attempt, wait


def submitted(store: JobStore, spec: JobSpec) -> None:
    """Record a job as queued (the queue adapter calls it just before sending the task)."""
    from budgetspan.accounting.redis_ledger import RedisLedger

    store.submitted(
        spec.job_id, spec.workflow, [RedisLedger.key(p.run_id) for p in spec.parents], notify=spec.notify
    )
    events.emit("on_job_state", spec.workflow, "queued")


def _queue_delay(spec: JobSpec, wait_s: float) -> None:
    """The job's wait in the queue as its own phase: a span from submission to the first start (in
    the submitter's trace, beside the run's span: the run had not begun), its metrics."""
    try:
        end_ns = time.time_ns()
        attrs: dict[str, str | float] = {
            A.PHASE: A.PHASE_QUEUE_DELAY,
            A.RUN_ID: spec.job_id,
            A.WORKFLOW: spec.workflow,
            A.JOB_QUEUE_WAIT_S: wait_s,
        }
        name = A.SPAN_PHASE.format(phase=A.PHASE_QUEUE_DELAY)
        span = context.get_tracer().start_span(
            name, start_time=end_ns - int(max(0.0, wait_s) * 1e9), attributes=attrs
        )
        span.end(end_time=end_ns)
    except Exception:
        events.internal_error("jobs.queue_delay")
    events.emit("on_job_queue_wait", spec.workflow, wait_s)
    events.emit("on_phase_end", None, spec.workflow, A.PHASE_QUEUE_DELAY, wait_s)


def _publisher(store: JobStore, job_id: str) -> Callable[[Milestone], None]:
    def publish(m: Milestone) -> None:
        if m.kind != "end":  # the store publishes the end, with its explanation
            store.publish(
                job_id,
                {"kind": m.kind, "label": m.label, "phase": m.phase, "elapsed_s": f"{m.elapsed_s:.3f}"},
            )

    return publish


def _parent_runs(spec: JobSpec, ledger: JobLedger) -> Run | None:
    """The runs the job was submitted from, as they stand on the shared ledger (not opened here:
    their records are held open by the job), innermost last made: the job's run spends from them."""
    parent: Run | None = None
    for p in reversed(spec.parents):
        parent = Run(p.workflow, p.budget, p.mode, run_id=p.run_id, ledger=ledger, parent=parent)
    return parent


def _run_scope(spec: JobSpec) -> RunScope:
    """The job's run: its id, budget, mode and identity, all from the job's headers."""
    return RunScope(
        spec.workflow,
        spec.budget,
        spec.mode,
        run_id=spec.job_id,
        suppress_exhausted=True,
        tenant=spec.tenant,
        user=spec.user,
        permissions=spec.permissions,
        conversation_id=spec.conversation_id,
    )


def _attempt(
    spec: JobSpec,
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    ledger: JobLedger,
    attempt: int,
    wait: float | None,
    retry: Callable[[BaseException], bool] | None = None,
) -> JobEnd:
    store, job_id = ledger.store, spec.job_id
    scope = _run_scope(spec)
    job_token = _current.set((store, job_id))
    progress = subscribe_progress(_publisher(store, job_id), run=job_id)
    error: BaseException | None = None
    run: Run | None = None
    attached = False
    parents = context.enter_run(_parent_runs(spec, ledger)) if spec.parents else None
    try:
        with scope as run:
            ledger.attach(job_id, attempt)
            attached = True
            if run.span is not None:
                run.span.set_attribute(A.JOB_ATTEMPT, attempt)
            if store.cancel_requested(job_id):
                run.cancel()  # cancelled between the start of the attempt and the run's opening
            watch = CancelWatch(store, job_id, run).start()  # in-flight async calls, from now on
            try:
                run.result = fn(*args, **kwargs)
            except Exception as exc:
                if retry is not None and retry(exc):  # the queue runs it again: keep its record
                    store.hold(job_id, [ledger.key(job_id)])
                raise
            finally:
                watch.close()
    except BudgetExhausted:
        pass  # suppressed by the scope; here for an enclosing run's refusal
    except Exception as exc:  # the job failed: recorded, notified (unless the queue retries it)
        error = exc
    finally:
        progress.close()
        if attached:
            ledger.detach(job_id)
        if parents is not None:
            context.exit_run(parents)
        _current.reset(job_token)
    assert run is not None
    if error is not None and retry is not None and retry(error):
        raise error  # no end: the next attempt goes on with the job's run
    return _end_of(run, error, store, job_id, attempt, wait)


def _end_of(
    run: Run, error: BaseException | None, store: JobStore, job_id: str, attempt: int, wait: float | None
) -> JobEnd:
    partial = dict(run.partial)
    partial["steps"] = store.steps(job_id)
    return JobEnd(
        job_id=job_id,
        outcome=run.outcome.value if run.outcome is not None else "failure",
        explanation=_explanation(run, error),
        partial=partial,
        result=run.result,
        attempts=attempt,
        queue_wait_s=wait,
        usage=(run.final_usage or Usage()).as_dict(),
    )


def _explanation(run: Run, error: BaseException | None) -> str:
    usage = run.final_usage or Usage()
    if run.exhausted is not None:
        return run.exhausted.explain(usage)
    for outer in run.ancestors():  # stopped by a run it was submitted from (a sub-job)
        if outer.exhausted is not None:
            return outer.exhausted.explanation
    if error is not None:
        # The end goes to Redis, the webhook and the progress stream: an error's text (a prompt,
        # a customer's address) only with content capture on, like on spans.
        if not capture_content():
            return f"Failed: {type(error).__name__}"
        try:
            text = str(error)
        except Exception:  # an error that cannot say what it is: its type still does
            text = ""
        return f"Failed: {type(error).__name__}" + (f": {text}" if text else "")
    done = f"{usage.model_calls} model calls, {usage.tool_calls} tool calls, ${usage.cost_usd:.4f}"
    if run.outcome is not None and run.outcome.value == "escalated":
        return f"Handed over to a person ({run.partial.get('escalation_reason') or 'no reason given'}) after {done}"
    return f"Done after {done}"


def cancel(store: JobStore, job_id: str) -> str:
    """Cancel a job from any process; returns its state when cancelled (``queued``, ``running``,
    ``ended``...). Queued: it ends now (outcome ``cancelled``; the queue adapter also revokes the
    message). Running: the ledger's cancel flag stops the run at its next call, and the attempt's
    ``CancelWatch`` cancels its in-flight async calls."""
    before = store.request_cancel(job_id)
    if before in ("queued", "unknown"):
        if store.end(JobEnd(job_id, "cancelled", "Cancelled before it started", {})):
            events.emit("on_job_state", store.state(job_id).get("workflow", "unknown"), "cancelled")
    elif before == "running":
        from budgetspan.accounting.redis_ledger import RedisLedger

        RedisLedger(store.client).cancel(job_id)  # False: the run is not open yet; the flag covers it
    return before


def abandon(ledger: JobLedger, job_id: str, error: BaseException) -> JobEnd | None:
    """End a running job whose attempt was killed with no retry to follow (Celery's hard time
    limit kills the pool process; only the worker's parent hears of it): what it held is given
    back, the end recorded and notified, instead of a job "running" for ever."""
    store = ledger.store
    state = store.state(job_id)
    if state.get("state") != "running":
        return None
    usage = ledger.abandon(job_id)
    end = JobEnd(
        job_id,
        "failure",
        f"Failed: {type(error).__name__}",
        {"steps": store.steps(job_id)},
        attempts=int(state.get("attempts") or 0),
        usage=usage.as_dict(),
    )
    if store.end(end):
        events.emit("on_job_state", state.get("workflow", "unknown"), "failure")
    deliver(store, state.get("notify") or None, store.ended(job_id) or end)
    return end


def wait_for_end(store: JobStore, job_id: str, timeout_s: float, poll_s: float = 0.05) -> JobEnd | None:
    """The job's recorded end, waiting up to ``timeout_s`` for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        end = store.ended(job_id)
        if end is not None or time.monotonic() >= deadline:
            return end
        time.sleep(poll_s)


__all__ = ["abandon", "cancel", "checkpoint", "current_job_id", "execute", "submitted", "wait_for_end"]
