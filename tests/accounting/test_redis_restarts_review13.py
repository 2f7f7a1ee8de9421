"""Review 13: the Redis ledger against a server that comes back with older data (restarted from
its last snapshot, a replica promoted with replication lag) and against an eviction policy that
may drop budget keys. A real ``redis-server`` each time, restarted on the same address and dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from budgetspan import events
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Spend
from budgetspan.accounting.redis_ledger import RedisLedger
from tests.accounting.redis_server import needs_redis_server, redis, start_redis, stop

pytestmark = needs_redis_server


class _InternalErrors:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_internal_error(self, where: str) -> None:
        self.seen.append(where)


@pytest.fixture
def internal_errors() -> Iterator[list[str]]:
    listener = _InternalErrors()
    events.add_listener(listener)
    yield listener.seen
    events.remove_listener(listener)


def _granted(ledger: RedisLedger, attempts: int) -> list[Any]:
    granted = []
    for _ in range(attempts):
        try:
            granted.append(ledger.reserve("r", CallKind.MODEL))
        except LedgerRefused as refused:
            assert refused.refusal.reason == "max_model_calls"
    return granted


def test_a_redis_restarted_from_an_older_snapshot_does_not_give_back_spent_calls(
    tmp_path: Path, internal_errors: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Found: Redis saves a snapshot after the first call, is killed after the second and comes
    back from that snapshot (RDB persistence; a promoted replica behind its primary is the same):
    the run's hash exists, so it was not taken for lost, and it said 1 call of 3 made. 4 calls
    went through under max_model_calls=3 and nothing was said. Now the ledger notices the
    server changed (its run_id) before the next script and sets each open run back to at least
    what this process last knew."""
    proc, port = start_redis(tmp_path)
    try:
        ledger = RedisLedger(redis.Redis(port=port), settle_lag_s=0)
        ledger.open("r", Budget(max_model_calls=3), Mode.ENFORCE)
        ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(10, 5))
        redis.Redis(port=port).save()  # the snapshot: 1 call made
        ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(10, 5))
        stop(proc)  # killed: the second call is not in the snapshot
        proc, _ = start_redis(tmp_path, port)  # back on the same address, from dump.rdb
        assert redis.Redis(port=port).exists(ledger.key("r"))  # the run's hash came back, older

        granted = _granted(ledger, 5)
        assert len(granted) == 1 and not any(res.fallback for res in granted)  # 3 of 3, on Redis
        assert internal_errors == ["redis_ledger"]
        said = [r.getMessage() for r in caplog.records if "restarted or failed over" in r.getMessage()]
        assert len(said) == 1 and "Scope windows" in said[0]
        assert ledger.close("r").model_calls == 3
    finally:
        stop(proc)


def test_a_connection_reset_on_the_same_server_restores_nothing(
    tmp_path: Path, internal_errors: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The check above must not fire on a mere reconnect to the same server (CLIENT KILL, an idle
    timeout): the ledger reconnects, the budget holds, nothing is reported."""
    proc, port = start_redis(tmp_path)
    try:
        admin = redis.Redis(port=port)
        ledger = RedisLedger(redis.Redis(port=port), settle_lag_s=0)
        ledger.open("r", Budget(max_model_calls=3), Mode.ENFORCE)
        ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(10, 5))
        admin.client_kill_filter(_type="normal", skipme=True)  # every ledger connection dropped
        granted = _granted(ledger, 4)
        assert len(granted) == 2 and not any(res.fallback for res in granted)
        assert internal_errors == [] and "restarted or failed over" not in caplog.text
    finally:
        stop(proc)
