"""Jobs 16: a job delivered twice at once. Celery's Redis broker delivers a message again when its
ack has not come within the ``visibility_timeout``, also for a job that is still running (longer
than the timeout) or waiting for its ``countdown``/``eta`` (further away than the timeout): two
attempts of one job would run at the same time. A real redis-server, a real ``celery worker``
process (prefork and threads pools, 2 slots) with a visibility timeout of 2 s, and the real
``openai`` SDK against the loopback model server that counts every request reaching it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetspan.jobs import JobStore, wait_for_end
from budgetspan.jobs.celery_queue import CeleryJobs
from tests.accounting.redis_server import redis
from tests.jobs.conftest import ROOT, notifications
from tests.jobs.model_server import ModelServer
from tests.jobs.test_review14_pools import PoolWorker

VISIBILITY_S = 2
LEASE_S = 3


class TwoSlotWorker(PoolWorker):
    """``celery -A tests.jobs.pool_app worker --pool=POOL -c 2``, visibility timeout 2 s."""

    def __init__(self, pool: str, env: dict[str, str], client: redis.Redis, log: Path) -> None:
        super().__init__(pool, env, client, log, slots=2)


@pytest.fixture(scope="module", params=["prefork", "threads"])
def worker(
    request: pytest.FixtureRequest,
    redis_url: str,
    model_server: ModelServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TwoSlotWorker]:
    env = dict(
        os.environ,
        POOL_TEST_REDIS=redis_url,
        POOL_TEST_MODEL=model_server.url,
        POOL_TEST_VISIBILITY=str(VISIBILITY_S),
        POOL_TEST_RESTORE_S="0.5",  # kombu sweeps for overdue messages every 0.5 s (default ~100 s)
        POOL_TEST_LEASE=str(LEASE_S),
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    )
    for name in ("BUDGETSPAN_BUDGET", "PROMETHEUS_MULTIPROC_DIR", "BUDGETSPAN_METRICS_PORT"):
        env.pop(name, None)
    w = TwoSlotWorker(
        request.param, env, redis.Redis.from_url(redis_url), tmp_path_factory.mktemp("worker") / "worker.log"
    )
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def jobs(redis_url: str) -> CeleryJobs:
    """The submitting side: an app of its own on this module's Redis (the worker's module,
    ``pool_app``, may be imported in this session against another module's Redis)."""
    from celery import Celery

    return CeleryJobs(Celery("jobs16_submit", broker=redis_url), redis.Redis.from_url(redis_url))


def _second_delivery(client: redis.Redis, model: ModelServer, job_id: str, timeout_s: float) -> bool:
    """Whether a second delivery of the job came: it waited for the live attempt (``duplicates``
    in the job hash) or ran the task a second time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if int(client.hget(f"budgetspan:job:{job_id}", "duplicates") or 0) >= 1:
            return True
        if client.llen(f"test:pids:{job_id}") >= 2 or model.steps(job_id).count(0) >= 2:
            return True
        time.sleep(0.05)
    return False


def _drained(client: redis.Redis, timeout_s: float = 30) -> None:
    """Every copy of every message taken and acknowledged: the queue and kombu's unacked hash empty."""
    deadline = time.monotonic() + timeout_s
    while client.llen("celery") or client.hlen("unacked"):
        assert time.monotonic() < deadline, "copies of the job's message still queued or unacknowledged"
        time.sleep(0.05)


def _assert_one_end(client: redis.Redis, job_id: str, outcome: str) -> None:
    ends = [e for _, e in client.xrange(f"budgetspan:job:{job_id}:progress") if e[b"kind"] == b"end"]
    assert len(ends) == 1, ends  # one end on the job's stream
    sent = notifications(client, job_id)
    assert len(sent) == 1, sent  # notified once (same idempotency key or not)
    assert sent[0]["outcome"] == outcome and sent[0]["idempotency_key"] == f"budgetspan-job-end:{job_id}"
    assert not client.exists(f"budgetspan:run:{job_id}")  # nothing left held on the ledger
    assert not client.hlen(f"budgetspan:job:{job_id}:calls")
    assert not client.exists(f"budgetspan:job:{job_id}:lease")


def test_a_job_longer_than_the_visibility_timeout_spends_its_budget_once(
    worker: TwoSlotWorker, jobs: CeleryJobs, model_server: ModelServer
) -> None:
    """Step 1 is held past the 2 s visibility timeout: the broker delivers the running job again."""
    client, store = jobs.client, JobStore(jobs.client)
    job_id = f"{worker.pool}-long"
    gate = model_server.gate(job_id, 1)
    try:
        jobs.submit(
            jobs.app.signature("pool.agent"),
            5,
            workflow="redelivered",
            budget={"max_model_calls": 3},
            job_id=job_id,
            notify="tests.jobs.pool_app:on_end",
        )
        model_server.wait_for(job_id, 1)
        assert _second_delivery(client, model_server, job_id, timeout_s=20), "the broker never redelivered"
    finally:
        gate.set()
    end = wait_for_end(store, job_id, timeout_s=30)
    _drained(client)
    sent = model_server.steps(job_id)
    assert sent == [0, 1, 2], f"{len(sent)} requests {sent} under max_model_calls=3"  # each step once
    assert end is not None and end.outcome == "budget_exhausted" and end.attempts == 1, end
    assert end.usage["model_calls"] == 3 and "3 of 3 model calls" in end.explanation
    assert store.steps(job_id) == {"step-0": "done 0", "step-1": "done 1", "step-2": "done 2"}
    assert len({int(p) for p in client.lrange(f"test:pids:{job_id}", 0, -1)}) == 1  # the task ran once
    assert int(store.state(job_id)["duplicates"]) >= 1  # the second delivery waited, and said so
    _assert_one_end(client, job_id, "budget_exhausted")


def test_a_countdown_beyond_the_visibility_timeout_runs_the_job_once(
    worker: TwoSlotWorker, jobs: CeleryJobs, model_server: ModelServer
) -> None:
    """A countdown of 5 s under a 2 s visibility timeout: the waiting message is delivered again
    (and again) before its time; at its time every copy is due at once."""
    client, store = jobs.client, JobStore(jobs.client)
    job_id = f"{worker.pool}-countdown"
    gate = model_server.gate(job_id, 0)  # the first copy holds step 0 while the others arrive
    try:
        jobs.submit(
            jobs.app.signature("pool.agent"),
            3,
            workflow="redelivered",
            budget={"max_model_calls": 2},
            job_id=job_id,
            notify="tests.jobs.pool_app:on_end",
            countdown=2 * VISIBILITY_S + 1,
        )
        model_server.wait_for(job_id, 0)
        # the copies are due together: the second comes at once, before any visibility timeout
        assert _second_delivery(client, model_server, job_id, timeout_s=VISIBILITY_S)
    finally:
        gate.set()
    end = wait_for_end(store, job_id, timeout_s=30)
    _drained(client)
    sent = model_server.steps(job_id)
    assert sent == [0, 1], f"{len(sent)} requests {sent} under max_model_calls=2"
    assert end is not None and end.outcome == "budget_exhausted" and end.attempts == 1, end
    assert end.usage["model_calls"] == 2
    assert end.queue_wait_s is not None and end.queue_wait_s >= 2 * VISIBILITY_S
    assert int(store.state(job_id)["duplicates"]) >= 1
    _assert_one_end(client, job_id, "budget_exhausted")


def test_the_live_attempt_killed_while_a_duplicate_waits_the_duplicate_takes_over(
    worker: TwoSlotWorker, jobs: CeleryJobs, model_server: ModelServer
) -> None:
    """The waiting delivery is not refused for good: when the live attempt dies, its lease
    expires (3 s here) and a waiting delivery runs the job as the next attempt, paying the dead
    attempt's call in flight once."""
    if worker.pool != "prefork":
        pytest.skip("a threads pool has no process of its own to kill")
    client, store = jobs.client, JobStore(jobs.client)
    job_id = f"{worker.pool}-killed"
    gate = model_server.gate(job_id, 1)
    try:
        jobs.submit(
            jobs.app.signature("pool.agent"),
            5,
            workflow="redelivered",
            budget={"max_model_calls": 4},
            job_id=job_id,
            notify="tests.jobs.pool_app:on_end",
        )
        model_server.wait_for(job_id, 1)
        assert _second_delivery(client, model_server, job_id, timeout_s=20)
        [child] = {int(p) for p in client.lrange(f"test:pids:{job_id}", 0, -1)}
        os.kill(child, signal.SIGKILL)  # the live attempt dies with step 1 in flight
    finally:
        gate.set()
    end = wait_for_end(store, job_id, timeout_s=30)
    _drained(client)
    assert model_server.steps(job_id) == [0, 1, 1, 2, 3]  # step 1 sent again, counted once
    assert end is not None and end.outcome == "budget_exhausted" and end.attempts == 2, end
    assert end.usage["model_calls"] == 4
    _assert_one_end(client, job_id, "budget_exhausted")
