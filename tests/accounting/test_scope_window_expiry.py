"""A scope window on Redis is one string whose expiry is set by the SET that writes it: by the
window's first call (to a fixed window's end plus the grace, reckoned from the scope clock; a
rolling window's length), kept by every later write (``KEEPTTL``), never reset by them."""

from __future__ import annotations

import shutil

import pytest

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Mode, Spend
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.scopes import Scope, ScopeBudget, ScopeRef
from budgetspan.accounting.windows import ROLLING_S, parse_window


@pytest.fixture
def ledger(redis_url: str) -> RedisLedger:
    if shutil.which("redis-server") is None:
        pytest.skip("Debian redis-server not installed")
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return RedisLedger(client)


def _ref(name: str, window: str) -> ScopeRef:
    return Scope("tenant", name, ScopeBudget(Budget(max_model_calls=100), parse_window(window))).ref()


def test_the_first_call_sets_the_expiry_and_later_writes_keep_it(
    scope_clock: list[float], ledger: RedisLedger
) -> None:
    day, rolling = _ref("fixed", "day"), _ref("rolling", "rolling-hour")
    keys = ["budgetspan:scope:" + r.key for r in (day, rolling)]
    ledger.open("r", Budget(), Mode.ENFORCE)
    res = ledger.reserve("r", CallKind.MODEL, scopes=(day, rolling))
    # 2025-12-05 02:00 UTC on the scope clock: the day ends in 22 h, then it is kept a day more
    # (yesterday's spend is readable all of today).
    assert ledger.client.ttl(keys[0]) == pytest.approx(22 * 3600 + 86_400, abs=2)
    assert ledger.client.ttl(keys[1]) == pytest.approx(ROLLING_S["hour"], abs=2)
    for key in keys:
        assert ledger.client.type(key) == b"string" and len(ledger.client.get(key) or b"") == 88
        ledger.client.expire(key, 100)  # (as if time had passed)
    ledger.commit(res, Spend(input_tokens=5, cost_usd=0.01))  # a settlement, then a reservation
    ledger.reserve("r", CallKind.MODEL, scopes=(day, rolling))
    ledger.flush()
    assert [0 < ledger.client.ttl(key) <= 100 for key in keys] == [True, True]
    used = ledger.scope_usage(day.key)
    assert used is not None and (used.model_calls, used.input_tokens) == (2, 5)


def test_a_window_past_its_end_still_expires(scope_clock: list[float], ledger: RedisLedger) -> None:
    """A call made with a window's ref after the window's end (a late settlement's, a clock moved
    on) creates it with a short expiry, never none: ttl = time left (negative) + the grace."""
    day = _ref("late", "day")
    assert day.end is not None
    scope_clock[0] = day.end + day.grace_s + 50  # past the end and the grace
    ledger.open("r", Budget(), Mode.ENFORCE)
    ledger.reserve("r", CallKind.MODEL, scopes=(day,))
    assert 0 < ledger.client.ttl("budgetspan:scope:" + day.key) <= 1
