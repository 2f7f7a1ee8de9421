"""Budgets above the run, through the real ``openai`` SDK against a local HTTP server and a real
``redis-server``: a tenant's daily budget across 4 processes, the window's reset, a conversation
that spans runs, the warning threshold once per window.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan.accounting import windows
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.accounting.redis_server import needs_redis_server, redis
from tests.instrumentation.llm_server import LLMServer
from tests.reliability.scoped_app import T0, scoped_app

pytestmark = needs_redis_server

MODEL = "gpt-4o-mini"  # $0.15 / $0.60 per million input / output tokens
USAGE = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
CALL_USD = 1000 * 0.15e-6 + 50 * 0.60e-6  # what each answer costs


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with LLMServer() as srv:
        yield srv


@pytest.fixture
def shared(lean: Any, redis_url: str, server: LLMServer) -> Iterator[Any]:
    """budgetspan on a RedisLedger (empty Redis), OpenAI instrumented, the scope clock at hand."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with scoped_app(server, lean, USAGE, budgetspan.RedisLedger(client)) as clock:
        yield clock


def _client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="t", base_url=base_url + "/v1", max_retries=0)


def _ask(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )


def _worker(redis_url: str, base_url: str, tenant: str, attempts: int, out: Any) -> None:
    """One process: its own ledger client and budgets, the same Redis, ``attempts`` runs."""
    windows.set_clock(lambda: T0)
    budgetspan.set_ledger(budgetspan.RedisLedger(redis.Redis.from_url(redis_url)))
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=25), window="day")
    budgetspan.set_scope_budget(
        "tenant", "globex", budgetspan.Budget(max_cost_usd=CALL_USD * 10.5), window="day"
    )
    OpenAIInstrumentor().instrument()
    client = _client(base_url)
    granted, said = 0, []
    for _ in range(attempts):
        try:
            with budgetspan.run("chat", tenant=tenant):
                _ask(client)
            granted += 1
        except budgetspan.BudgetExhausted as e:
            said.append(e.explanation)
    out.put((granted, said[:1]))


def _race(redis_url: str, server: LLMServer, tenant: str) -> tuple[int, list[str]]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(redis_url, server.base_url, tenant, 12, out)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(10)
    return sum(g for g, _ in results), [s for _, said in results for s in said]


def test_a_tenant_daily_call_budget_holds_across_four_processes(
    shared: Any, redis_url: str, server: LLMServer
) -> None:
    granted, said = _race(redis_url, server, "acme")
    assert granted == 25 == len(server.requests)  # 48 attempts; not one call over
    assert (
        said
        and said[0] == "Stopped: tenant acme has made 25 of its 25 daily model calls; resets at 00:00 UTC."
    )
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=25), window="day")
    assert budgetspan.spend(tenant="acme", window="day").model_calls == 25


def test_a_tenant_daily_dollar_budget_holds_across_four_processes(
    shared: Any, redis_url: str, server: LLMServer
) -> None:
    granted, said = _race(redis_url, server, "globex")
    budgetspan.set_scope_budget(
        "tenant", "globex", budgetspan.Budget(max_cost_usd=CALL_USD * 10.5), window="day"
    )
    spent = budgetspan.spend(tenant="globex").cost_usd
    assert granted == len(server.requests) >= 5
    # The documented bound: what the calls in flight spend beyond the worst cases they reserved
    # (here the prompt's 1,000 reported tokens against a small estimate), one call per process.
    assert spent == pytest.approx(granted * CALL_USD)
    assert spent <= CALL_USD * 10.5 + 4 * CALL_USD
    assert said and said[0].startswith("Stopped: tenant globex has spent $0.00")
    assert said[0].endswith("daily budget; resets at 00:00 UTC.") or "could have cost" in said[0]


def test_the_window_resets_by_itself(shared: Any, server: LLMServer) -> None:
    clock = shared
    budgetspan.set_scope_budget(
        "tenant", "acme", budgetspan.Budget(max_model_calls=2), window="day", tz="Europe/Paris"
    )
    client = _client(server.base_url)
    for _ in range(2):
        with budgetspan.run("chat", tenant="acme"):
            _ask(client)
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("chat", tenant="acme"):
            _ask(client)
    assert info.value.scope == "tenant acme"
    assert info.value.explanation.endswith("resets at 00:00 Europe/Paris.")
    assert len(server.requests) == 2
    clock[0] += 21 * 3600 - 1  # 2025-12-05 23:59:59 in Paris: still the same day
    with pytest.raises(budgetspan.BudgetExhausted):
        with budgetspan.run("chat", tenant="acme"):
            _ask(client)
    clock[0] += 1  # midnight in Paris: a new window, empty
    with budgetspan.run("chat", tenant="acme"):
        _ask(client)
    assert len(server.requests) == 3
    assert budgetspan.spend(tenant="acme").model_calls == 1
    assert budgetspan.spend(tenant="acme", at=T0).model_calls == 2


def test_a_conversation_budget_spans_several_runs(shared: Any, server: LLMServer) -> None:
    budgetspan.set_scope_budget("conversation", "default", budgetspan.Budget(max_total_tokens=3000))
    client = _client(server.base_url)
    for _ in range(2):  # two turns of session s-1: 2,100 tokens
        with budgetspan.run("chat", conversation_id="s-1"):
            _ask(client)
    with budgetspan.run("chat", conversation_id="s-2"):  # another session has its own budget
        _ask(client)
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("chat", conversation_id="s-1"):
            _ask(client)  # its worst case (the prompt and 50 tokens) fits; spent 3,150 after it
            _ask(client)
    assert info.value.explanation.startswith("Stopped: conversation s-1 has used 3,150 of its 3,000 total")
    assert len(server.requests) == 4
    assert budgetspan.spend(conversation="s-1").total_tokens == 3150


def test_the_warning_threshold_fires_once_per_window(shared: Any, server: LLMServer) -> None:
    clock = shared
    fired: list[budgetspan.ScopeWarning] = []
    heard: list[Any] = []

    class Listener:
        def on_scope_warning(self, warning: Any) -> None:
            heard.append(warning)

    budgetspan.add_listener(Listener())
    budgetspan.set_scope_budget(
        "user", "ann", budgetspan.Budget(max_model_calls=10), window="hour", warn_at=0.5, on_warn=fired.append
    )
    client = _client(server.base_url)
    for _ in range(8):
        with budgetspan.run("chat", user="ann"):
            _ask(client)
    assert len(server.requests) == 8  # a warning refuses nothing
    assert [(w.kind, w.name, w.limit, w.used, w.of) for w in fired] == [
        ("user", "ann", "max_model_calls", 5, 10)
    ]
    assert heard == fired
    clock[0] += 3600  # the next hour: the threshold may fire again, once
    for _ in range(6):
        with budgetspan.run("chat", user="ann"):
            _ask(client)
    assert len(fired) == 2 and fired[1].window != fired[0].window
