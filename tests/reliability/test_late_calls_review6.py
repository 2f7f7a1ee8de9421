"""A closed run's late calls (threads that outlived its block) on both ledgers, several at once,
through the real ``openai`` SDK against a local server (review 6 of the Redis ledger)."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import openai
import pytest

import budgetspan
from tests.instrumentation.llm_server import LLMServer
from tests.reliability.scoped_app import local_server, on_either_ledger

MODEL = "gpt-4o-mini"
USAGE = {"prompt_tokens": 1, "completion_tokens": 50, "total_tokens": 51}
CALL_USD = 1 * 0.15e-6 + 50 * 0.60e-6


server = local_server
app = on_either_ledger(USAGE)


def _late_threads(server: LLMServer, threads: int, calls: int, mode: str = "enforce") -> list[str]:
    """``threads`` threads started in a run call ``calls`` times each after its block ended."""
    client = openai.OpenAI(api_key="t", base_url=server.base_url + "/v1", max_retries=0)
    go, said, lock = threading.Event(), [], threading.Lock()

    def later() -> None:
        go.wait(10)
        for _ in range(calls):
            try:
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=50
                )
                outcome = "ok"
            except budgetspan.BudgetExhausted:
                outcome = "refused"
            with lock:
                said.append(outcome)

    workers = []
    with budgetspan.run("chat", tenant="acme", mode=mode):
        for _ in range(threads):
            carried = contextvars.copy_context()
            workers.append(threading.Thread(target=carried.run, args=(later,)))
            workers[-1].start()
    go.set()
    for w in workers:
        w.join(60)
    return said


def test_many_late_threads_at_once_stay_within_the_tenant_calls(app: Any, server: LLMServer) -> None:
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=5), window="day")
    said = _late_threads(server, threads=6, calls=3)
    assert len(server.requests) == 5 and said.count("ok") == 5 and said.count("refused") == 13
    assert budgetspan.spend(tenant="acme").model_calls == 5


def test_many_late_threads_at_once_stay_within_the_tenant_dollars(app: Any, server: LLMServer) -> None:
    budgetspan.set_scope_budget(
        "tenant", "acme", budgetspan.Budget(max_cost_usd=CALL_USD * 4.5), window="day"
    )
    said = _late_threads(server, threads=6, calls=2)
    assert said.count("ok") == len(server.requests) <= 4
    spent = budgetspan.spend(tenant="acme")
    assert spent.model_calls == len(server.requests)
    assert spent.cost_usd == pytest.approx(CALL_USD * len(server.requests))


def test_late_threads_in_observe_mode_are_all_counted(app: Any, server: LLMServer) -> None:
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=2), window="day")
    said = _late_threads(server, threads=4, calls=2, mode="observe")
    assert said.count("ok") == 8 and len(server.requests) == 8
    assert budgetspan.spend(tenant="acme").model_calls == 8
