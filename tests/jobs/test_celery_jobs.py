"""Budgeted jobs on a real Celery worker (a separate process), a real redis-server and the real
``openai`` SDK against a loopback model server that counts the requests reaching it; the jobs'
metrics from the worker's /metrics."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from budgetspan import events
from budgetspan.jobs import JobStore, wait_for_end
from budgetspan.processors.metrics import BudgetspanMetrics
from tests.jobs.conftest import ROOT, Worker, notifications, scrape, value
from tests.jobs.model_server import ModelServer


def spans_of_trace(worker: Worker, trace_id: str, timeout_s: float = 15) -> list[str]:
    """The worker's exported OTLP lines in trace ``trace_id`` (waiting for its batch to be written)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = worker.traces.read_text() if worker.traces.exists() else ""
        found = [line for line in text.splitlines() if trace_id in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_submit_progress_from_another_process_then_notification(
    worker: Worker, app_module: Any, model_server: ModelServer, redis_url: str
) -> None:
    jobs = app_module.jobs
    with TracerProvider().get_tracer("test").start_as_current_span("submit") as submitting:
        job_id = jobs.submit(
            app_module.agent,
            2,
            workflow="triage",
            budget={"max_model_calls": 5},
            notify="tests.jobs.celery_app:on_end",
            identity={"tenant": "acme", "user": "u-7"},
        )
    trace_id = format(submitting.get_span_context().trace_id, "032x")
    watch = subprocess.run(
        [
            sys.executable,
            "-m",
            "budgetspan.cli",
            "jobs",
            "watch",
            job_id,
            "--redis",
            redis_url,
            "--timeout",
            "60",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    lines = [line.strip().split("  ", 1)[-1] for line in watch.stdout.splitlines()]
    assert watch.returncode == 0, watch.stderr
    assert lines == ["Step 0", "Step 1", "success: Done after 2 model calls, 0 tool calls, $0.0000"]

    [note] = notifications(jobs.client, job_id)
    assert note["outcome"] == "success"
    assert note["result"] == ["done 0", "done 1"]
    assert note["idempotency_key"] == f"budgetspan-job-end:{job_id}"
    assert note["usage"]["model_calls"] == 2 and note["usage"]["input_tokens"] == 20
    assert model_server.steps(job_id) == [0, 1]  # the job id is the run id the calls were made in
    assert JobStore(jobs.client).state(job_id)["state"] == "ended"
    # The worker's run is in the submitter's trace (W3C traceparent in the task's headers).
    # The identity came with the job: the worker's run span says whom it worked for. (The worker
    # writes its spans in batches: the run span may land a moment after the notification.)
    deadline = time.monotonic() + 15
    while True:
        lines = [line for line in spans_of_trace(worker, trace_id) if job_id in line]
        if any('"budgetspan.tenant.id"' in line and '"acme"' in line for line in lines):
            break
        assert time.monotonic() < deadline, f"no run span for {job_id} with its tenant: {lines[:3]}"
        time.sleep(0.2)


def test_cancel_while_running_and_while_queued(
    worker: Worker, app_module: Any, model_server: ModelServer
) -> None:
    jobs = app_module.jobs
    notify = "tests.jobs.celery_app:on_end"
    running = jobs.submit(app_module.agent, 4, workflow="triage", notify=notify, job_id="running-job")
    gate = model_server.gate(running, 1)
    queued = jobs.submit(app_module.agent, 2, workflow="triage", notify=notify, job_id="queued-job")
    model_server.wait_for(running, 1)  # step 1's call is in flight; the queued job waits behind it

    assert jobs.cancel(queued) == "queued"
    assert jobs.cancel(running) == "running"
    gate.set()  # step 1 answers after the cancel landed: step 2 is refused before it is sent

    [ran] = notifications(jobs.client, running)
    assert ran["outcome"] == "cancelled"
    assert ran["partial"]["steps"] == {"step-0": "done 0", "step-1": "done 1"}  # kept
    assert model_server.steps(running) == [0, 1]
    [waited] = notifications(jobs.client, queued)
    assert waited["outcome"] == "cancelled"
    assert waited["idempotency_key"] == f"budgetspan-job-end:{queued}"
    assert model_server.steps(queued) == []


def test_worker_killed_mid_run_the_retry_pays_no_call_twice_and_limits_hold(
    worker: Worker, app_module: Any, model_server: ModelServer
) -> None:
    jobs = app_module.jobs
    job_id = jobs.submit(
        app_module.agent,
        5,
        workflow="triage",
        budget={"max_model_calls": 4},
        notify="tests.jobs.celery_app:on_end",
        job_id="killed-job",
    )
    gate = model_server.gate(job_id, 2)
    model_server.wait_for(job_id, 2)
    worker.kill()  # dies with step 2's call reserved and in flight
    gate.set()
    del model_server.gates[(job_id, 2)]
    worker.start()  # the broker delivers the unacknowledged task again

    end = wait_for_end(JobStore(jobs.client), job_id, timeout_s=60)
    assert end is not None and end.attempts == 2
    # Steps 0 and 1 came from their checkpoints; step 2 was sent again (its answer was lost) and
    # counted once; step 4 would be the 5th call of 4: refused before it was sent.
    assert model_server.steps(job_id) == [0, 1, 2, 2, 3]
    assert end.outcome == "budget_exhausted"
    assert end.explanation.startswith("Stopped after 4 of 4 model calls")
    assert end.usage["model_calls"] == 4
    assert set(end.partial["steps"]) == {"step-0", "step-1", "step-2", "step-3"}
    [note] = notifications(jobs.client, job_id)
    assert note["attempts"] == 2
    # The restarted worker counted the job's second delivery as a retry.
    assert value(scrape(worker.metrics_url), "budgetspan_jobs_total", workflow="triage", state="retried") == 1
    # The wall clock is the job's: it spans both attempts and the restart between them.
    t = model_server.times
    assert end.usage["wall_clock_s"] >= t[(job_id, 3)] - t[(job_id, 0)]
    # The dead attempt's opener was taken off: the run's ledger record went with the retry's close.
    assert not jobs.client.exists(f"budgetspan:run:{job_id}")
    assert not jobs.client.hlen(f"budgetspan:job:{job_id}:calls")


def test_cancel_from_another_process_cancels_the_async_call_in_flight(
    worker: Worker, app_module: Any, model_server: ModelServer
) -> None:
    jobs = app_module.jobs
    job_id = "async-job"
    model_server.gate(job_id, 1)  # step 1's response is held: it stays in flight until cancelled
    jobs.submit(
        app_module.agent_async, 3, workflow="triage", notify="tests.jobs.celery_app:on_end", job_id=job_id
    )
    model_server.wait_for(job_id, 1)

    assert jobs.cancel(job_id) == "running"
    # The worker hung up on the held call (the gate never opens), and sent nothing after it.
    assert model_server.wait_closed(job_id, 1), notifications(jobs.client, job_id, timeout_s=5)
    [note] = notifications(jobs.client, job_id)
    assert note["outcome"] == "cancelled"
    assert note["partial"]["last_model_answer"] == "done 0"  # the partial result is kept
    assert note["usage"]["model_calls"] == 2  # the cancelled call was sent: it counts
    assert model_server.steps(job_id) == [0, 1]


def test_jobs_by_state_and_queue_wait_as_its_own_phase(worker: Worker, app_module: Any) -> None:
    jobs = app_module.jobs
    registry = CollectorRegistry()
    submitter = BudgetspanMetrics(registry=registry)
    events.add_listener(submitter)
    try:
        job_id = jobs.submit(app_module.agent, 1, workflow="metered", budget={"max_model_calls": 3})
    finally:
        events.remove_listener(submitter)
    assert registry.get_sample_value("budgetspan_jobs_total", {"workflow": "metered", "state": "queued"}) == 1

    end = wait_for_end(JobStore(jobs.client), job_id, timeout_s=60)
    assert end is not None and end.outcome == "success"
    deadline = time.monotonic() + 10  # the worker counts the end just after recording it
    while (
        value(
            seen := scrape(worker.metrics_url), "budgetspan_jobs_total", workflow="metered", state="success"
        )
        < 1
    ):
        assert time.monotonic() < deadline, "the worker never counted the job's end"
        time.sleep(0.05)
    assert value(seen, "budgetspan_jobs_total", workflow="metered", state="running") == 1
    assert value(seen, "budgetspan_jobs_total", workflow="metered", state="retried") == 0
    assert value(seen, "budgetspan_job_queue_wait_seconds_count", workflow="metered") == 1
    waited = value(seen, "budgetspan_job_queue_wait_seconds_sum", workflow="metered")
    assert waited == end.queue_wait_s  # the wait Redis's clock measured, observed once
    phase = value(seen, "budgetspan_phase_duration_seconds_count", workflow="metered", phase="queue_delay")
    assert phase == 1

    # The queue delay is a span of its own, named and tagged as a phase, carrying the job's id.
    lines = spans_of_trace(worker, job_id)
    assert any('"phase queue_delay"' in line for line in lines), lines
