"""Fixtures for the accounting tests: both ledgers, for the behaviour that must hold the same way in
each (a module that tests one ledger only defines its own ``ledger``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from budgetspan import events
from budgetspan.accounting.ledger import Ledger
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_ledger import RedisLedger


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> Ledger:
    """The in-memory ledger, then the Redis ledger on an emptied real redis-server."""
    if request.param == "memory":
        return InMemoryLedger()
    return request.getfixturevalue("redis_ledger")  # type: ignore[no-any-return]


@pytest.fixture
def redis_ledger(redis_url: str) -> RedisLedger:
    """The Redis ledger on an emptied real redis-server."""
    if shutil.which("redis-server") is None:
        pytest.skip("Debian redis-server not installed")
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return RedisLedger(client)


class _InternalErrors:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_internal_error(self, where: str) -> None:
        self.seen.append(where)


@pytest.fixture
def internal_errors() -> Iterator[list[str]]:
    """Where budgetspan reported internal errors (``budgetspan_internal_errors_total``) in the test."""
    listener = _InternalErrors()
    events.add_listener(listener)
    yield listener.seen
    events.remove_listener(listener)
