"""A process pool forked inside a run, its workers each given their own ``RedisLedger`` (as the
README says: one in every worker) and joining the run by its id, through the real ``openai`` SDK
and a real ``redis-server`` (review 5). The worker's run and the run it inherited from the fork
share one record on Redis: each call is counted once."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan.accounting.pricing import set_default_resolver
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.accounting.redis_server import needs_redis_server, redis
from tests.instrumentation.llm_server import LLMServer

pytestmark = needs_redis_server


@pytest.fixture
def server(lean: Any) -> Iterator[LLMServer]:
    set_default_resolver(None)
    OpenAIInstrumentor().instrument()
    try:
        with LLMServer() as srv:
            yield srv
    finally:
        OpenAIInstrumentor().uninstrument()
        lean.install()


def _own_ledger(redis_url: str) -> None:
    """The pool's initializer: this worker's own client and ledger."""
    budgetspan.set_ledger(budgetspan.RedisLedger(redis.Redis.from_url(redis_url, socket_timeout=2)))


def _job(base_url: str) -> tuple[str, int]:
    client = openai.OpenAI(api_key="t", base_url=base_url + "/v1", max_retries=0)
    try:
        with budgetspan.run("batch", run_id="batch-7", max_model_calls=7) as run:
            for _ in range(2):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
                )
        return "ok", run.usage.model_calls
    except budgetspan.BudgetExhausted as e:
        return e.explanation, -1


def test_a_forked_worker_with_its_own_ledger_counts_each_call_once(redis_url: str, server: LLMServer) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    _own_ledger(redis_url)
    fork = multiprocessing.get_context("fork")
    with budgetspan.run("batch", run_id="batch-7", max_model_calls=7) as run:
        with ProcessPoolExecutor(1, mp_context=fork, initializer=_own_ledger, initargs=(redis_url,)) as pool:
            said = list(pool.map(_job, [server.base_url] * 3))
        used = run.usage.model_calls
    assert said == [("ok", 2), ("ok", 4), ("ok", 6)]  # was: counted twice, refused at "6 of 7" after 3
    assert len(server.requests) == 6 == used
