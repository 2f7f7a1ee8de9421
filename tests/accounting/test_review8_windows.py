"""Review 8 of the scope windows kept as packed strings: defects found, each on both ledgers where
it applies (a real redis-server; the scope clock of ``scope_clock``)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from budgetspan.accounting import redis_scopes
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.scopes import Scope, ScopeBudget, ScopeRef
from budgetspan.accounting.windows import IDLE_TTL_S, parse_window


def _ref(name: str, window: str, tz: str = "UTC", calls: int = 100) -> ScopeRef:
    limits = ScopeBudget(Budget(max_model_calls=calls), parse_window(window, tz))
    return Scope("tenant", name, limits).ref()


def _at(text: str, tz: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


# A window followed by a longer one: a 23-hour day (spring forward), the 24-hour day before a
# 25-hour one (fall back), February. Its record must outlive its end by the NEXT window's length
# ("yesterday's spend can be asked all of today, last month's all of this month").
LONGER_NEXT = [
    ("day", "Europe/Paris", "2026-03-29T12:00", "2026-03-30T23:30"),  # 23 h, then 24 h
    ("day", "Europe/Paris", "2026-10-24T12:00", "2026-10-25T23:30"),  # 24 h, then 25 h
    ("month", "UTC", "2026-02-10T12:00", "2026-03-30T12:00"),  # 28 days, then 31
    ("month", "America/New_York", "2026-04-10T12:00", "2026-05-31T20:00"),  # 30 days, then 31
]


@pytest.mark.parametrize(("window", "tz", "when", "asked"), LONGER_NEXT)
@pytest.mark.parametrize("which", ["memory", "redis"])
def test_the_window_before_a_longer_one_is_readable_all_of_it(
    scope_clock: list[float],
    request: pytest.FixtureRequest,
    which: str,
    window: str,
    tz: str,
    when: str,
    asked: str,
) -> None:
    ledger = InMemoryLedger() if which == "memory" else request.getfixturevalue("redis_ledger")
    scope_clock[0] = _at(when, tz)
    ref = _ref("acme", window, tz)
    ledger.open("r", Budget(), Mode.ENFORCE)
    ledger.commit(ledger.reserve("r", CallKind.MODEL, scopes=(ref,)))
    ledger.close("r")
    later = _at(asked, tz)
    assert parse_window(window, tz).bounds(later).start == pytest.approx(ref.end)  # (the next window)
    if which == "redis":  # Redis's own clock does not move: what is left of its ttl, then
        left = redis_ledger_ttl(ledger, ref)
        assert left >= later - scope_clock[0], f"expires {later - scope_clock[0] - left:.0f} s too early"
    else:
        scope_clock[0] = later
        used = ledger.scope_usage(ref.key)
        assert used is not None and used.model_calls == 1


def redis_ledger_ttl(ledger: RedisLedger, ref: ScopeRef) -> int:
    ttl: int = ledger.client.ttl(redis_scopes.PREFIX + ref.key)
    return ttl


@pytest.mark.parametrize("which", ["memory", "redis"])
def test_a_scope_without_a_window_refused_every_day_stays_refused(
    scope_clock: list[float], request: pytest.FixtureRequest, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lifetime budget (no window) used up: its calls, refused, are uses of the scope; it must
    not expire 7 days after its last GRANTED call and start again from zero (the budget silently
    stops holding). InMemoryLedger refreshes a refused scope's record; Redis must as well."""
    ledger = InMemoryLedger() if which == "memory" else request.getfixturevalue("redis_ledger")
    mono = [1000.0]
    monkeypatch.setattr(redis_scopes, "_now", lambda: mono[0])
    ref = Scope("conversation", "c", ScopeBudget(Budget(max_model_calls=1))).ref()
    ledger.open("r", Budget(), Mode.ENFORCE)
    ledger.commit(ledger.reserve("r", CallKind.MODEL, scopes=(ref,)))
    for _day in range(10):  # refused every day for 10 days
        scope_clock[0] += 86_400
        mono[0] += 86_400
        if which == "redis":  # (Redis's clock does not move: a day of its ttl gone)
            key = redis_scopes.PREFIX + ref.key
            ledger.client.expire(key, max(1, ledger.client.ttl(key) - 86_400))
        with pytest.raises(LedgerRefused):
            ledger.reserve("r", CallKind.MODEL, scopes=(ref,))
    with pytest.raises(LedgerRefused):
        ledger.reserve("r", CallKind.MODEL, scopes=(ref,))
    if which == "redis":
        assert ledger.client.ttl(redis_scopes.PREFIX + ref.key) > IDLE_TTL_S - 86_400


@pytest.mark.parametrize("which", ["memory", "redis"])
def test_spend_at_a_window_no_longer_kept_says_so_instead_of_zero(
    scope_clock: list[float], request: pytest.FixtureRequest, which: str
) -> None:
    """A fixed window's record is kept until the end of the window after it; asked ``at=`` a
    window before that (last week), ``spend()`` answered 0 calls for a day that had 3: a figure
    it cannot know, given as zero. It says so instead; yesterday's is still answered."""
    import budgetspan
    from budgetspan.runs import context

    if which == "redis":
        context.set_ledger(request.getfixturevalue("redis_ledger"))
    budgetspan.set_scope_budget("tenant", "acme", Budget(max_model_calls=9), window="day")
    monday = scope_clock[0]
    for _ in range(3):
        with budgetspan.run("chat", tenant="acme") as run:
            run.reserve(CallKind.MODEL)
    assert budgetspan.spend(tenant="acme", at=monday).model_calls == 3
    scope_clock[0] += 86_400  # the next day: Monday is still kept
    assert budgetspan.spend(tenant="acme", at=monday).model_calls == 3
    scope_clock[0] += 7 * 86_400  # a week later: Monday's record is gone
    with pytest.raises(ValueError, match="no longer kept"):
        budgetspan.spend(tenant="acme", at=monday)
    assert budgetspan.spend(tenant="acme", at=scope_clock[0] - 86_400).model_calls == 0  # (kept: none)
