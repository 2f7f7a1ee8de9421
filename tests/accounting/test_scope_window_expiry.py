"""A scope window on Redis is one string whose expiry is set by the SET that writes it: by the
window's first call (to a fixed window's end plus the grace, reckoned from the scope clock; a
rolling window's length), kept by every later write (``KEEPTTL``), never reset by them. A rolling
window's calls settle only in the record they reserved in."""

from __future__ import annotations

import pytest

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Mode, Spend
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.scopes import Scope, ScopeBudget, ScopeRef
from budgetspan.accounting.windows import ROLLING_S, parse_window


@pytest.fixture
def ledger(redis_ledger: RedisLedger) -> RedisLedger:
    return redis_ledger  # (conftest: an emptied real redis-server)


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


def test_a_rolling_windows_calls_settle_only_in_the_record_they_reserved_in(
    scope_clock: list[float], ledger: RedisLedger
) -> None:
    """A rolling window's next record has the same key: a call reserved in the record before gives
    back nothing in it (its worst case was never held there) and adds none of its spend to it. A
    fixed window and a scope without a window name no record (their keys do, or they never roll)."""
    rolling, day = _ref("rolling", "rolling-hour"), _ref("fixed", "day")
    none = Scope("conversation", "c", ScopeBudget(Budget(max_model_calls=100))).ref()
    ledger.open("r", Budget(), Mode.ENFORCE)
    old = ledger.reserve("r", CallKind.MODEL, worst_case_cost=1.0, scopes=(rolling, day, none))
    assert [ref.born is not None for ref in old.scopes] == [True, False, False]
    ledger.client.delete("budgetspan:scope:" + rolling.key)  # its hour is up (Redis's clock)
    scope_clock[0] += 3600
    new = ledger.reserve("r", CallKind.MODEL, worst_case_cost=1.0, scopes=(rolling, day, none))
    assert new.scopes[0].born != old.scopes[0].born
    ledger.commit(old, Spend(input_tokens=7, cost_usd=0.25))
    ledger.flush()
    held = ledger.client.get("budgetspan:scope:" + rolling.key)
    assert held is not None
    used = ledger.scope_usage(rolling.key)
    assert used is not None and (used.model_calls, used.input_tokens, used.cost_usd) == (1, 0, 0.0)
    assert ledger.scope_usage(day.key).input_tokens == 7  # type: ignore[union-attr]
    ledger.commit(new, Spend(input_tokens=3, cost_usd=0.5))
    ledger.flush()
    used = ledger.scope_usage(rolling.key)
    assert used is not None and (used.input_tokens, used.cost_usd) == (3, 0.5)
