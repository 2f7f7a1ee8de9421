"""Review 14: a sub-job (a job submitted inside a declared run on the Redis ledger), run in this
process with ``jobs.execute`` on a real redis-server: a parent cancelled while its sub-job waits
stops the sub-job at its first call; the parent's record goes with the sub-job's end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import budgetspan
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.jobs import JobLedger, JobSpec, execute
from budgetspan.jobs import worker as job_worker
from budgetspan.runs import context
from tests.accounting.redis_server import redis


@pytest.fixture
def ledger(redis_url: str) -> Iterator[JobLedger]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    previous = context.get_ledger()
    led = JobLedger(client)
    context.set_ledger(led)
    try:
        yield led
    finally:
        context.set_ledger(previous)


def test_a_cancelled_parent_stops_its_sub_job(ledger: JobLedger) -> None:
    ran: list[int] = []

    @budgetspan.tool
    def lookup(x: int) -> int:
        ran.append(x)
        return x

    with budgetspan.run("parent", max_tool_calls=10) as run:
        spec = JobSpec.new("child")
        job_worker.submitted(ledger.store, spec)
        assert [p.run_id for p in spec.parents] == [run.id]
        RedisLedger(ledger.client).cancel(run.id)
        with pytest.raises(budgetspan.BudgetExhausted):
            lookup(0)

    def child() -> Any:
        return [lookup(i) for i in range(1, 4)]

    end = execute(spec, child, (), {}, ledger)
    assert end is not None and end.outcome == "cancelled", end
    assert ran == []  # no tool body of the sub-job ran
    assert not ledger.client.keys("budgetspan:run:*")  # the parent's held record went with the end
