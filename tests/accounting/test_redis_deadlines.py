"""Review: a run's wall-clock limit holds on the Redis ledger as in memory, although a reservation
asks the server's clock only when this process's reckoning puts the deadline near."""

from __future__ import annotations

import time

import pytest

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Ledger, LedgerRefused, Mode
from budgetspan.accounting.redis_ledger import RedisLedger
from tests.accounting.redis_server import needs_redis_server, redis


def test_the_time_kept_for_the_final_answer_ends_other_calls_early(ledger: Ledger) -> None:
    """``reserve_for_final={"max_wall_clock_s": 2}`` of 3 s: a call outside the final phase is
    refused after 1 s (the in-memory rule); on Redis the process's reckoning of when to ask the
    server's clock must count the time kept, or such calls pass until ~2 s."""
    ledger.open("r", Budget(max_wall_clock_s=3, reserve_for_final={"max_wall_clock_s": 2}), Mode.ENFORCE)
    ledger.reserve("r", CallKind.MODEL)
    time.sleep(1.2)
    with pytest.raises(LedgerRefused) as refused:
        ledger.reserve("r", CallKind.MODEL)
    assert refused.value.refusal.reason == "max_wall_clock_s"
    ledger.reserve("r", CallKind.MODEL, final=True)  # the final answer has the whole 3 s


@needs_redis_server
def test_a_peer_with_a_shorter_ttl_does_not_let_a_live_run_expire(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes share a run, one with ``ttl_s=2``. Its open sets the hash's expiry 2 s away;
    the other (``ttl_s=600``) refreshes it only every 60 s, so the run it keeps using must not
    expire meanwhile (a lost run is restored without its peers' spend: an internal error)."""
    busy = RedisLedger(redis.Redis.from_url(redis_url), ttl_s=600)
    brief = RedisLedger(redis.Redis.from_url(redis_url), ttl_s=2)
    budget = Budget(max_model_calls=100)
    busy.open("shared", budget, Mode.ENFORCE)
    brief.open("shared", budget, Mode.ENFORCE)
    brief.reserve("shared", CallKind.MODEL)  # the peer's spend, seen only on Redis
    for _ in range(6):
        busy.reserve("shared", CallKind.MODEL)
        time.sleep(0.5)
    assert "missing from the Redis ledger" not in caplog.text  # (expired, then restored)
    assert busy.client.ttl(busy.key("shared")) > 2
    assert busy.usage("shared").model_calls == 7
