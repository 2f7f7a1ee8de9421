"""Jobs by state and the queue wait, from a real Celery worker's /metrics (and the submitter's)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry

from budgetspan import events
from budgetspan.jobs import JobStore, wait_for_end
from budgetspan.processors.metrics import BudgetspanMetrics
from tests.jobs.conftest import Worker, scrape, value
from tests.jobs.test_celery_jobs import spans_of_trace


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
