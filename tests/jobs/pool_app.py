"""The Celery app of the pool tests (``celery -A tests.jobs.pool_app worker --pool=prefork|threads``).

Its own module and environment variables (``POOL_TEST_*``), so that it can be imported in the same
pytest session as ``celery_app`` against another Redis. Model calls go through the real ``openai``
SDK, instrumented by budgetspan, configured in ``worker_init`` (the pool's parent, before it forks).
"""

from __future__ import annotations

import json
import os
from typing import Any

import openai
import redis
from celery import Celery, signals

import budgetspan
from budgetspan.jobs import JobEnd, checkpoint, current_job_id
from budgetspan.jobs.celery_queue import CeleryJobs

REDIS_URL = os.environ.get("POOL_TEST_REDIS", "redis://127.0.0.1:6379/0")
MODEL_URL = os.environ.get("POOL_TEST_MODEL", "http://127.0.0.1:1/v1")
NOTIFIED = "test:notified"

app = Celery("pool_test", broker=REDIS_URL)
_transport: dict[str, Any] = {"visibility_timeout": float(os.environ.get("POOL_TEST_VISIBILITY", "60"))}
if os.environ.get("POOL_TEST_RESTORE_S"):  # kombu's sweep of unacknowledged messages (default ~100 s)
    _transport.update(
        unacked_restore_interval=float(os.environ["POOL_TEST_RESTORE_S"]), unacked_restore_throttle=1
    )
app.conf.update(
    broker_transport_options=_transport,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
client = redis.Redis.from_url(REDIS_URL)
jobs = CeleryJobs(
    app, client, lease_s=float(os.environ.get("POOL_TEST_LEASE", "3"))
)  # a dead attempt's job: taken over ≤ 3 s after


def _instrument(**_: Any) -> None:
    budgetspan.configure(instrument=["openai"])


def _ready(**_: Any) -> None:
    client.set(f"test:worker-ready:{os.getpid()}", "1")


signals.worker_init.connect(_instrument, weak=False)
signals.worker_ready.connect(_ready, weak=False)


def on_end(end: JobEnd) -> None:
    client.rpush(NOTIFIED, json.dumps(end.as_dict(), default=repr))


def _call(job: str | None, step: int) -> str:
    model = openai.OpenAI(base_url=MODEL_URL, api_key="test", max_retries=0)
    reply = model.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"{job} {step}"}], max_tokens=20
    )
    return reply.choices[0].message.content or ""


@jobs.task(name="pool.agent")
def agent(steps: int) -> list[str]:
    """One model call per checkpointed step; the pool process that runs it is noted."""
    job = current_job_id()
    client.rpush(f"test:pids:{job}", os.getpid())
    return [checkpoint(f"step-{i}", lambda i=i: _call(job, i)) for i in range(steps)]  # type: ignore[misc]


@jobs.task(name="pool.fanout")
def fanout(children: int, steps: int) -> list[str]:
    """One model call, then ``children`` sub-jobs of ``steps`` calls each, submitted from the job."""
    job = current_job_id()
    _call(job, 0)
    return [
        jobs.submit(agent, steps, job_id=f"{job}-c{c}", notify="tests.jobs.pool_app:on_end")
        for c in range(children)
    ]


@jobs.task(name="pool.flaky", autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0)
def flaky(steps: int) -> list[str]:
    """Fails with ConnectionError on its first attempt after one call; Celery is asked to retry it."""
    job = current_job_id()
    first = client.incr(f"test:flaky:{job}") == 1
    answers = [_call(job, 0 if first else 10 + i) for i in range(1 if first else steps)]
    if first:
        raise ConnectionError("the first attempt fails")
    return answers


@jobs.task(name="pool.broken", autoretry_for=(ConnectionError,), max_retries=1, default_retry_delay=0)
def broken() -> None:
    """One call, then ConnectionError, on every attempt: Celery retries it once, then it fails."""
    job = current_job_id()
    _call(job, int(client.incr(f"test:broken:{job}")))
    raise ConnectionError("down")


@jobs.task(name="pool.slow", time_limit=3)
def slow(steps: int) -> list[str]:
    """``steps`` calls under Celery's hard time limit of 3 s (the test holds one of them)."""
    job = current_job_id()
    return [_call(job, i) for i in range(steps)]
