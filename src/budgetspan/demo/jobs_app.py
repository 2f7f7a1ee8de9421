"""The demo's Celery app: the background tickets as jobs (``budgetspan demo --jobs``).

``budgetspan demo --jobs`` starts ``celery -A budgetspan.demo.jobs_app worker`` with the Redis in
``BUDGETSPAN_REDIS_URL`` and the model server in ``BUDGETSPAN_DEMO_MODEL_URL``; the demo itself
builds the same app (``make_app``) to submit. The tickets go to their own queue, so a Redis that
other Celery apps use is not disturbed.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

ENV_REDIS_URL = "BUDGETSPAN_REDIS_URL"
ENV_MODEL_URL = "BUDGETSPAN_DEMO_MODEL_URL"  # unset: the real OpenAI API (OPENAI_API_KEY)
ENV_SCALE = "BUDGETSPAN_DEMO_LATENCY_SCALE"
QUEUE = "budgetspan-demo"
TASK = "budgetspan_demo.resolve_ticket"
READY_KEY = "budgetspan:demo:worker-ready:{pid}"


@dataclass
class DemoJobs:
    app: Any  # celery.Celery
    jobs: Any  # budgetspan.jobs.celery_queue.CeleryJobs
    resolve_ticket: Any  # the Celery task


def make_app(redis_url: str) -> DemoJobs:
    import redis
    from celery import Celery

    from budgetspan.jobs.celery_queue import CeleryJobs

    app = Celery("budgetspan_demo", broker=redis_url)
    app.conf.update(
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={"visibility_timeout": 600},  # longer than any demo ticket
    )
    jobs = CeleryJobs(app, redis.Redis.from_url(redis_url))

    @jobs.task(name=TASK)
    def resolve_ticket(ticket_id: str) -> str | None:
        import budgetspan
        from budgetspan.demo.agent import SupportAgent
        from budgetspan.demo.data import TICKETS

        ticket = next(t for t in TICKETS if t.id == ticket_id)
        run = budgetspan.current_run()
        assert run is not None  # the job's run

        async def work() -> str | None:
            from openai import AsyncOpenAI

            url = os.environ.get(ENV_MODEL_URL)
            client = (
                AsyncOpenAI(base_url=url, api_key="demo-key-not-used", max_retries=0)
                if url
                else AsyncOpenAI()
            )
            agent = SupportAgent(client, scale=float(os.environ.get(ENV_SCALE) or 1.0))
            return await agent.work_in(run, ticket)

        return asyncio.run(work())

    return DemoJobs(app, jobs, resolve_ticket)


def _worker_only() -> Any:
    """What ``celery -A budgetspan.demo.jobs_app`` loads: the app, instrumented in the worker."""
    from celery import signals

    demo = make_app(os.environ.get(ENV_REDIS_URL, "redis://127.0.0.1:6379/0"))

    def setup(**_: Any) -> None:
        import budgetspan

        budgetspan.configure(instrument=["openai"])
        import openai  # noqa: F401  (imported now, not inside the first job's run and its wall clock)

        import budgetspan.demo.agent

    def ready(**_: Any) -> None:
        demo.jobs.client.set(READY_KEY.format(pid=os.getpid()), "1", ex=600)

    signals.worker_init.connect(setup, weak=False)
    signals.worker_ready.connect(ready, weak=False)
    return demo.app


def __getattr__(name: str) -> Any:  # ``celery -A budgetspan.demo.jobs_app`` looks up ``app``
    if name in ("app", "celery"):
        value = _worker_only()
        globals()["app"] = globals()["celery"] = value
        return value
    raise AttributeError(name)
