"""The Redis backend against a real redis-server: entries shared between processes, invalidation
by tool, version and tenant, an outage (server killed, server frozen) bypassing the cache, and one
computation for 50 concurrent callers of one key spread over five processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import budgetspan
from budgetspan import attributes as A
from tests.accounting.redis_server import frozen, needs_redis_server, redis, start_redis, stop

pytestmark = needs_redis_server
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, port = start_redis(tmp_path)
    yield proc, f"redis://127.0.0.1:{port}/0"
    stop(proc)


def _workers(url: str, tenant: str, query: str, processes: int, threads: int) -> list[Any]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    start_at = time.time() + 1.5  # every process imported and ready: they call together
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.cache.redis_worker",
                url,
                tenant,
                query,
                str(threads),
                str(start_at),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    got: list[Any] = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        got.extend(json.loads(out))
    return got


def test_entries_are_shared_between_processes_per_tenant(server: Any) -> None:
    _, url = server
    client = redis.Redis.from_url(url)
    assert _workers(url, "acme", "refunds", 1, 1) == [{"answer": "refunds for acme"}]
    assert _workers(url, "acme", "refunds", 1, 1) == [
        {"answer": "refunds for acme"}
    ]  # another process: a hit
    assert int(client.get("test:computations")) == 1
    assert _workers(url, "globex", "refunds", 1, 1) == [{"answer": "refunds for globex"}]
    assert int(client.get("test:computations")) == 2
    names = [k.decode() for k in client.keys("budgetspan:cache:*")]
    assert names and not any("acme" in n or "refunds" in n or "globex" in n for n in names)


def test_fifty_callers_in_five_processes_compute_once(server: Any) -> None:
    _, url = server
    got = _workers(url, "acme", "refunds", 5, 10)
    assert got == [{"answer": "refunds for acme"}] * 50
    assert int(redis.Redis.from_url(url).get("test:computations")) == 1


def test_invalidation_by_tool_version_and_tenant(server: Any) -> None:
    _, url = server
    store = budgetspan.RedisCache(url)
    calls: list[tuple[str, str]] = []

    def make(version: str) -> Any:
        @budgetspan.cached(
            name="kb", cache=budgetspan.Cache("tenant", ttl_s=60, version=version, backend=store)
        )
        def kb(q: str) -> str:
            run = budgetspan.current_run()
            assert run is not None and run.tenant is not None
            calls.append((run.tenant, version))
            return f"{q}/{run.tenant}/{version}/{len(calls)}"

        return kb

    v1, v2 = make("1"), make("2")

    def ask(f: Any, tenant: str) -> str:
        with budgetspan.run("w", tenant=tenant):
            return str(f("q"))

    first = {t: ask(v1, t) for t in ("acme", "globex")}
    first_v2 = ask(v2, "acme")
    assert {t: ask(v1, t) for t in ("acme", "globex")} == first and len(calls) == 3
    budgetspan.invalidate_cache("kb", tenant="acme", backend=store)
    assert ask(v1, "acme") != first["acme"] and ask(v1, "globex") == first["globex"]
    assert ask(v2, "acme") != first_v2  # a tenant's invalidation covers every version of the tool
    budgetspan.invalidate_cache("kb", version="1", backend=store)
    assert ask(v1, "globex") != first["globex"]
    n = len(calls)
    kept = ask(v2, "acme")
    assert len(calls) == n  # version 2 was not touched
    budgetspan.invalidate_cache("kb", backend=store)
    assert ask(v2, "acme") != kept
    budgetspan.invalidate_cache(tenant="globex", backend=store)  # every tool of one tenant
    before = len(calls)
    ask(v1, "globex")
    assert len(calls) == before + 1


def test_an_outage_bypasses_the_cache(server: Any, tracing: Any) -> None:
    proc, url = server
    calls: list[str] = []

    @budgetspan.tool(
        cache=budgetspan.Cache("global", ttl_s=60, backend=budgetspan.RedisCache(url, timeout_s=0.3))
    )
    def lookup(q: str) -> str:
        calls.append(q)
        return q.upper()

    assert lookup("a") == lookup("a") == "A" and calls == ["a"]
    with frozen(proc):  # connections accepted, nothing answers: the client's timeout
        assert lookup("a") == "A"
    stop(proc)  # killed: connections refused
    assert lookup("a") == "A" and lookup("b") == "B"
    assert calls == ["a", "a", "a", "b"]
    results = [s.attributes[A.CACHE_RESULT] for s in tracing.spans("execute_tool lookup")]
    assert results == ["miss", "unavailable", "unavailable", "unavailable"]
    assert [s.attributes[A.CACHE_RESULT] for s in tracing.spans("cached lookup")] == ["hit"]
