"""The cache in one process: keys, scopes, budgets, spans, single flight, LRU bounds, outages,
and what a hit saved, measured from the real OpenAI SDK's calls (over a recording transport)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan import attributes as A
from budgetspan.cache.backend import MemoryCache
from budgetspan.cache.keys import NotCacheable, canonical
from tests.replay import Recorder, chat_completion, json_response

USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}


def test_canonical_arguments_are_stable_and_strict() -> None:
    assert canonical(("q",), {"b": 1, "a": {"y": 2, "x": [1.5, None]}}) == canonical(
        ("q",), {"a": {"x": [1.5, None], "y": 2}, "b": 1}
    )
    assert canonical((1,), {}) != canonical(("1",), {})
    for bad in (object(), {1, 2}, float("nan"), b"x", {1: "non-string key"}):
        with pytest.raises(NotCacheable):
            canonical((bad,), {})


def test_backend_keys_are_digests_without_argument_text() -> None:
    store = MemoryCache()
    lookup = budgetspan.cached(
        lambda q: q, name="t", cache=budgetspan.Cache("tenant", ttl_s=60, backend=store)
    )
    with budgetspan.run("w", tenant="acme-corp", user="ann"):
        lookup("secret question")
    (key,) = store._entries
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert "secret" not in key and "acme" not in key


def test_a_hit_is_not_a_tool_call(tracing: Any) -> None:
    calls: list[str] = []

    @budgetspan.tool(cache=budgetspan.Cache("tenant", ttl_s=60, backend=MemoryCache()))
    def search(q: str) -> list[str]:
        calls.append(q)
        time.sleep(0.01)
        return [q.upper()]

    with budgetspan.run("w", tenant="acme", max_tool_calls=1) as run:
        assert search("x") == search("x") == search("x") == ["X"]
        assert run.usage.tool_calls == 1
        with pytest.raises(budgetspan.BudgetExhausted):
            search("y")  # a second computation is a second tool call: refused
    assert calls == ["x"]
    (miss,) = tracing.spans("execute_tool search")
    assert miss.attributes[A.CACHE_RESULT] == "miss" and miss.attributes[A.CACHE_SCOPE] == "tenant"
    hits = tracing.spans("cached search")
    assert [s.attributes[A.CACHE_RESULT] for s in hits] == ["hit", "hit"]
    assert all(A.GEN_AI_OPERATION_NAME not in s.attributes for s in hits)
    assert all(s.attributes[A.RUN_ID] == run.id and s.attributes[A.CACHE_SAVED_S] > 0 for s in hits)
    assert run.partial["tool_results"] == [{"tool": "search", "result": ["X"]}] * 3


def test_a_scope_the_run_cannot_fill_is_never_cached_and_says_so_once(
    tracing: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    store = MemoryCache()

    @budgetspan.tool(name="per_user_notes", cache=budgetspan.Cache("user", ttl_s=60, backend=store))
    def notes(q: str) -> str:
        calls.append(q)
        return q

    with caplog.at_level(logging.WARNING, logger="budgetspan.cache.core"):
        with budgetspan.run("w", tenant="acme"):  # no user
            notes("a"), notes("a")
        with budgetspan.run("w"):  # nothing at all
            notes("a")
    assert calls == ["a", "a", "a"] and len(store) == 0
    said = [r for r in caplog.records if "per_user_notes" in r.getMessage()]
    assert len(said) == 2  # once for the missing user, once for the missing tenant
    spans = tracing.spans("execute_tool per_user_notes")
    assert [s.attributes[A.CACHE_REASON] for s in spans] == ["no_user", "no_user", "no_tenant"]
    assert {s.attributes[A.CACHE_RESULT] for s in spans} == {"skipped"}


def test_arguments_or_results_without_a_canonical_form_are_not_cached() -> None:
    calls: list[Any] = []
    store = MemoryCache()
    cache = budgetspan.Cache("global", ttl_s=60, backend=store)
    by_object = budgetspan.cached(lambda o: calls.append(o) or 1, name="by_object", cache=cache)
    returns_set = budgetspan.cached(lambda q: calls.append(q) or {1, 2}, name="returns_set", cache=cache)
    marker = object()
    assert by_object(marker) == by_object(marker) == 1
    assert returns_set("q") == returns_set("q") == {1, 2}
    assert len(calls) == 4 and len(store) == 0


def test_memory_backend_is_bounded_in_bytes_least_recently_used_first() -> None:
    store = MemoryCache(max_bytes=2000)
    for i in range(4):
        store.set(f"k{i}", b"x" * 300, None)
    assert store.get("k0") is not None  # k0 is now the most recently used
    for i in range(4, 8):
        store.set(f"k{i}", b"x" * 300, None)
    assert store.bytes <= 2000
    assert store.get("k0") is not None and store.get("k1") is None and store.get("k7") is not None
    store.set("huge", b"x" * 5000, None)  # larger than the whole cache: not kept, nothing evicted
    assert store.get("huge") is None and store.get("k7") is not None


def test_ttl_and_data_version_decide_freshness() -> None:
    now = [0.0]
    index = ["build-1"]
    calls: list[str] = []
    cache = budgetspan.Cache(
        "global",
        ttl_s=30,
        data_version=lambda: index[0],
        backend=MemoryCache(clock=lambda: now[0]),
        clock=lambda: now[0],
    )
    f = budgetspan.cached(lambda q: calls.append(q) or len(calls), name="f", cache=cache)
    assert f("q") == f("q") == 1
    index[0] = "build-2"
    assert f("q") == 2
    now[0] = 29.9
    assert f("q") == 2
    now[0] = 30.0
    assert f("q") == 3


def test_a_cache_needs_a_freshness_rule() -> None:
    with pytest.raises(ValueError, match="freshness"):
        budgetspan.Cache("tenant")
    with pytest.raises(ValueError):
        budgetspan.Cache("everyone", ttl_s=1)  # type: ignore[arg-type]


class _Down:
    """A backend whose every operation fails, as a store that went away does."""

    name = "down"

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any) -> Any:
            raise ConnectionError("backend down")

        return fail


def test_a_backend_outage_bypasses_the_cache(tracing: Any) -> None:
    calls: list[str] = []

    @budgetspan.tool(cache=budgetspan.Cache("global", ttl_s=60, backend=_Down()))  # type: ignore[arg-type]
    def lookup(q: str) -> str:
        calls.append(q)
        return q

    assert lookup("a") == lookup("a") == "a"
    assert calls == ["a", "a"]
    assert {s.attributes[A.CACHE_RESULT] for s in tracing.spans("execute_tool lookup")} == {"unavailable"}


def test_fifty_threads_one_computation() -> None:
    calls: list[str] = []
    barrier = threading.Barrier(50)
    slow = budgetspan.cached(
        lambda q: (calls.append(q), time.sleep(0.3), q.upper())[-1],
        name="slow",
        cache=budgetspan.Cache("global", ttl_s=60, backend=MemoryCache()),
    )
    results: list[str] = []

    def caller() -> None:
        barrier.wait()
        results.append(slow("q"))

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["q"] and results == ["Q"] * 50


def test_fifty_tasks_one_computation() -> None:
    calls: list[str] = []

    @budgetspan.cached(scope="tenant", ttl_s=60, backend=MemoryCache())
    async def slow(q: str) -> str:
        calls.append(q)
        await asyncio.sleep(0.2)
        return q.upper()

    async def main() -> list[str]:
        with budgetspan.run("w", tenant="acme"):
            return await asyncio.gather(*(slow("q") for _ in range(50)))

    assert asyncio.run(main()) == ["Q"] * 50
    assert calls == ["q"]


def test_a_failed_computation_is_not_shared_or_stored() -> None:
    attempts: list[int] = []

    def flaky(q: str) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        return q

    f = budgetspan.cached(
        flaky, name="flaky", cache=budgetspan.Cache("global", ttl_s=60, backend=MemoryCache())
    )
    with pytest.raises(RuntimeError):
        f("q")
    assert f("q") == f("q") == "q" and len(attempts) == 2


def test_a_hit_saves_the_recorded_cost_of_the_calls_it_replaces(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(text="Refunds within 30 days.", usage=USAGE)))
    client = openai.OpenAI(api_key="test", http_client=rec.sync(), max_retries=0)
    records: list[Any] = []

    class Listen:
        def on_cache(self, r: Any) -> None:
            records.append(r)

    @budgetspan.tool(cache=budgetspan.Cache("tenant", ttl_s=60, backend=MemoryCache()))
    def summarise(policy: str) -> str:
        out = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": policy}]
        )
        return out.choices[0].message.content or ""

    listener = Listen()
    budgetspan.add_listener(listener)
    try:
        with budgetspan.run("support", tenant="acme") as run:
            for _ in range(3):
                assert summarise("refunds") == "Refunds within 30 days."
    finally:
        budgetspan.remove_listener(listener)
    assert len(rec.requests) == 1 and run.usage.model_calls == 1
    (chat,) = instrumented.spans("chat")
    cost = chat.attributes[A.GEN_AI_USAGE_COST]
    assert cost > 0
    (miss,) = instrumented.spans("execute_tool summarise")
    assert miss.attributes[A.CACHE_COST_USD] == cost
    hits = instrumented.spans("cached summarise")
    assert [h.attributes[A.CACHE_SAVED_USD] for h in hits] == [cost, cost]
    assert [(r.result, r.saved_usd) for r in records] == [("miss", None), ("hit", cost), ("hit", cost)]
