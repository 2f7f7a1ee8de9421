"""A tenant's daily budget on a real redis-server that goes down in the middle of a run, through
the real ``openai`` SDK against a local server (``on_error="open"``, the default): the run goes on
in its process, and once Redis is back its calls count in the tenant's window, so that
``budgetspan.spend`` and the next run see them. Was: ``spend()`` answered 2 of 5 calls, and the
next run could spend the tenant's day again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import budgetspan
from tests.accounting.redis_server import needs_redis_server, redis, start_redis, stop
from tests.instrumentation.llm_server import LLMServer
from tests.reliability.scoped_app import client_of, local_server, scoped_app

pytestmark = needs_redis_server
server = local_server
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def redis_dir(tmp_path: Path) -> Iterator[tuple[Path, list[Any]]]:
    procs: list[Any] = []
    yield tmp_path, procs
    for proc in procs:
        stop(proc)


def _ask(client: Any) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )


def test_calls_made_while_redis_was_down_count_in_the_tenants_day(
    lean: Any, server: LLMServer, redis_dir: tuple[Path, list[Any]]
) -> None:
    directory, procs = redis_dir
    proc, port = start_redis(directory, None, *PERSISTENT)
    procs.append(proc)
    ledger = budgetspan.RedisLedger(redis.Redis(port=port), timeout_s=0.5)
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    with scoped_app(server, lean, usage, ledger):
        budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=6), window="day")
        client = client_of(server)
        with budgetspan.run("chat", tenant="acme"):
            _ask(client)
            _ask(client)
            stop(proc)  # Redis goes down mid-run: the run goes on in the process
            for _ in range(3):
                _ask(client)
            proc, _ = start_redis(directory, port, *PERSISTENT)
            procs.append(proc)
        assert len(server.requests) == 5
        assert budgetspan.spend(tenant="acme").model_calls == 5
        with budgetspan.run("chat", tenant="acme", suppress_exhausted=True) as run:
            for _ in range(3):
                _ask(client)  # 1 left of the tenant's 6: the second is refused
        assert len(server.requests) == 6
        assert run.outcome == "budget_exhausted"
