"""Review 13: the Redis ledger under a server's failures, through the real ``openai`` SDK against a
local HTTP server and a real ``redis-server``: a Redis restarted from an older snapshot mid-run,
and a window-only tenant budget (``[tenants.default]`` with ``window = "day"``) kept by several
processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan.accounting import windows
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.accounting.redis_server import needs_redis_server, redis, start_redis, stop
from tests.instrumentation.llm_server import LLMServer
from tests.reliability.scoped_app import T0, client_of, scoped_app

pytestmark = needs_redis_server

MODEL = "gpt-4o-mini"
USAGE = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
CALL_USD = 1000 * 0.15e-6 + 50 * 0.60e-6


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with LLMServer() as srv:
        yield srv


def _ask(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )


def test_a_redis_restarted_from_an_older_snapshot_mid_run_gives_no_call_back(
    lean: Any, server: LLMServer, tmp_path: Path
) -> None:
    """Redis snapshots after the first call and comes back from it after the second (RDB
    persistence, or a replica promoted behind its primary): 4 requests reached the server under
    ``max_model_calls=3`` before (the hash came back saying 1), 3 now."""
    proc, port = start_redis(tmp_path)
    try:
        ledger = budgetspan.RedisLedger(redis.Redis(port=port))
        with scoped_app(server, lean, USAGE, ledger):
            client = client_of(server)
            with pytest.raises(budgetspan.BudgetExhausted) as info:
                with budgetspan.run("chat", budget=budgetspan.Budget(max_model_calls=3)):
                    for i in range(6):
                        if i == 1:
                            redis.Redis(port=port).save()
                        if i == 2:
                            stop(proc)
                            proc, _ = start_redis(tmp_path, port)  # from dump.rdb: 1 call made
                        _ask(client)
            assert len(server.requests) == 3
            assert info.value.explanation.startswith("Stopped after 3 of 3 model calls")
    finally:
        stop(proc)


def _worker(redis_url: str, base_url: str, runs: int, out: Any) -> None:
    """One process: the config file's ``[tenants.default]`` (inherited), its own ledger client."""
    windows.set_clock(lambda: T0)
    budgetspan.set_ledger(budgetspan.RedisLedger(redis.Redis.from_url(redis_url)))
    OpenAIInstrumentor().instrument()
    client = openai.OpenAI(api_key="t", base_url=base_url + "/v1", max_retries=0)
    sent = 0
    for i in range(runs):
        with budgetspan.run("chat", tenant=("acme", "globex", "initech")[i % 3]):
            _ask(client)
            sent += 1
    out.put(sent)


def test_a_window_only_tenant_budget_counts_every_process_and_refuses_nothing(
    lean: Any, server: LLMServer, redis_url: str, config_file: Callable[[str], None]
) -> None:
    """New today: ``[tenants.default]`` with ``window = "day"`` and no limit. 3 processes × 9 runs
    over 3 tenants: all 27 calls sent, and ``spend()`` from another process answers each tenant's
    9 calls and their dollars, in today's window (expiring a day after it ends)."""
    config_file('[tenants.default]\nwindow = "day"\n')
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with scoped_app(server, lean, USAGE, budgetspan.RedisLedger(client)):
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(redis_url, server.base_url, 9, out)) for _ in range(3)]
        for p in procs:
            p.start()
        sent = sum(out.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(10)
        assert sent == 27 == len(server.requests)
        for tenant in ("acme", "globex", "initech"):
            spent = budgetspan.spend(tenant=tenant, window="day")
            assert spent.model_calls == 9 and spent.cost_usd == pytest.approx(9 * CALL_USD)
            ttl = client.ttl(f"budgetspan:scope:tenant:{tenant}:2025-12-05")
            assert 22 * 3600 + 86_400 - 60 <= ttl <= 22 * 3600 + 86_400  # the day's end + one day
