"""The Celery app the test worker runs (``celery -A tests.jobs.celery_app worker --pool=solo``).

Configured from the environment the fixture sets: the Redis (broker, ledger and job state) and the
model server. Model calls go through the real ``openai`` SDK, instrumented by budgetspan.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import openai
import redis
from celery import Celery, signals

import budgetspan
from budgetspan.jobs import JobEnd, checkpoint, current_job_id
from budgetspan.jobs.celery_queue import CeleryJobs

REDIS_URL = os.environ.get("JOBS_TEST_REDIS", "redis://127.0.0.1:6379/0")
MODEL_URL = os.environ.get("JOBS_TEST_MODEL", "http://127.0.0.1:1/v1")
NOTIFIED = "test:notified"

app = Celery("jobs_test", broker=REDIS_URL)
app.conf.update(
    broker_transport_options={"visibility_timeout": 2, "unacked_restore_throttle": 1},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
client = redis.Redis.from_url(REDIS_URL)
jobs = CeleryJobs(app, client, lease_s=3)  # a killed worker's job: taken over ≤ 3 s after


def _instrument(**_: Any) -> None:
    budgetspan.configure(instrument=["openai"])  # in the worker only, not in the submitting test


def _ready(**_: Any) -> None:
    client.set(f"test:worker-ready:{os.getpid()}", "1")


signals.worker_init.connect(_instrument, weak=False)
signals.worker_ready.connect(_ready, weak=False)


def on_end(end: JobEnd) -> None:
    """The notification target: what the test reads from another process."""
    client.rpush(NOTIFIED, json.dumps(end.as_dict(), default=repr))


@jobs.task(name="tests.agent")
def agent(steps: int) -> list[str]:
    """One labelled step per model call; each step is checkpointed."""
    model = openai.OpenAI(base_url=MODEL_URL, api_key="test", max_retries=0)
    job = current_job_id()
    answers = []
    for i in range(steps):

        def call(i: int = i) -> str:
            with budgetspan.phase("model_decision", label=f"Step {i}"):
                reply = model.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"{job} {i}"}], max_tokens=20
                )
            return reply.choices[0].message.content or ""

        answers.append(checkpoint(f"step-{i}", call))
    return answers


@jobs.task(name="tests.agent_async")
def agent_async(steps: int) -> list[str]:
    """The same steps with the async SDK: a cancel from another process cancels the call in flight."""
    job = current_job_id()

    async def main() -> list[str]:
        model = openai.AsyncOpenAI(base_url=MODEL_URL, api_key="test", max_retries=0)
        answers = []
        for i in range(steps):
            with budgetspan.phase("model_decision", label=f"Step {i}"):
                reply = await model.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"{job} {i}"}], max_tokens=20
                )
            answers.append(reply.choices[0].message.content or "")
        return answers

    return asyncio.run(main())
