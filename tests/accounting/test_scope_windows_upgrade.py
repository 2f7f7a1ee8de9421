"""A deploy must not reset a tenant's spend: scope windows that budgetspan kept as Redis hashes
(before they were packed strings) are carried over by the first call that finds them, with their
spend, their warning and their expiry, and refuse exactly what a window that never was a hash
refuses. The hashes are written here with the exact bytes the earlier scripts wrote."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from budgetspan.accounting.budget import Budget, Usage
from budgetspan.accounting.ledger import CallKind, Ledger, LedgerRefused, Mode, Spend
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.scopes import Scope, ScopeBudget, ScopeRef, ScopeWarning
from budgetspan.accounting.windows import parse_window

#: The earlier layout, frozen here: a window's hash held its figures in one field ``F``, these
#: 16 in this order as little-endian doubles, and ``warned`` = '1' once it had warned.
_EARLIER = (
    "model_calls",
    "tool_calls",
    "retries",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_calls",
    "unreported_usage_calls",
    "tools_finished",
    "held:cost_usd",
    "held:input_tokens",
    "held:output_tokens",
    "cancelled",
)


def _earlier_window(client: Any, ref: ScopeRef, ttl_s: int, warned: bool, **figures: float) -> str:
    """Write ``ref``'s window as the earlier scripts did (HSET F [warned], EXPIRE)."""
    key = "budgetspan:scope:" + ref.key
    packed = struct.pack("<16d", *(float(figures.get(name, 0)) for name in _EARLIER))
    client.hset(key, mapping={"F": packed, **({"warned": "1"} if warned else {})})
    client.expire(key, ttl_s)
    return key


@pytest.fixture
def ledger(redis_ledger: RedisLedger) -> RedisLedger:
    return redis_ledger  # (conftest: an emptied real redis-server)


def _tenant(name: str, warnings: list[ScopeWarning] | None = None) -> ScopeRef:
    budget = Budget(max_cost_usd=1.0, max_model_calls=6)
    on_warn = None if warnings is None else warnings.append
    return Scope("tenant", name, ScopeBudget(budget, parse_window("day"), 0.5, on_warn)).ref()


def test_a_window_kept_as_a_hash_keeps_its_spend_warning_and_expiry(ledger: RedisLedger) -> None:
    warnings: list[ScopeWarning] = []
    tenant = _tenant("acme", warnings)
    key = _earlier_window(ledger.client, tenant, 5000, True, model_calls=3, cost_usd=0.9, input_tokens=70)
    used = ledger.scope_usage(tenant.key)  # read before any call: the hash as it is
    assert used is not None and (used.model_calls, used.cost_usd, used.input_tokens) == (3, 0.9, 70)
    ledger.open("r", Budget(), Mode.ENFORCE)
    with pytest.raises(LedgerRefused) as info:  # $0.90 spent + $0.20 worst case > $1
        ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.2, scopes=(tenant,))
    assert (info.value.refusal.scope, info.value.refusal.spent) == (tenant, pytest.approx(0.9))
    assert ledger.client.type(key) == b"string"  # carried over by that first call
    assert 4900 < ledger.client.ttl(key) <= 5000  # its expiry kept, not set anew
    res = ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.05, scopes=(tenant,))
    ledger.commit(res, Spend(input_tokens=10, cost_usd=0.04))
    ledger.flush()
    assert warnings == []  # it had warned already: not again
    used = ledger.scope_usage(tenant.key)
    assert used is not None and (used.model_calls, used.input_tokens) == (4, 80)
    assert used.cost_usd == pytest.approx(0.94)
    assert 4900 < ledger.client.ttl(key) <= 5000


def test_a_window_that_had_not_warned_warns_once_after_the_upgrade(ledger: RedisLedger) -> None:
    warnings: list[ScopeWarning] = []
    tenant = _tenant("beta", warnings)
    _earlier_window(ledger.client, tenant, 5000, False, cost_usd=0.45)
    ledger.open("r", Budget(), Mode.ENFORCE)
    for _ in range(2):
        ledger.commit(ledger.reserve("r", CallKind.MODEL, scopes=(tenant,)), Spend(cost_usd=0.1))
    ledger.flush()
    assert [(w.limit, w.used) for w in warnings] == [("max_cost_usd", pytest.approx(0.55))]


def _outcomes(ledger: Ledger, run_id: str, ref: ScopeRef) -> list[Any]:
    """The same calls on any ledger: what each is granted or refused, and the spend after."""
    ledger.open(run_id, Budget(), Mode.ENFORCE)
    seen: list[Any] = []
    for worst, cost in [(0.05, 0.02), (0.3, 0.1), (0.01, 0.01), (0.02, 0.01), (0.01, 0.0), (0.0, 0.0)]:
        try:
            res = ledger.reserve(run_id, CallKind.MODEL, worst_case_cost=worst, scopes=(ref,))
        except LedgerRefused as refused:
            r = refused.refusal
            seen.append((r.reason, r.limit, round(r.spent or 0.0, 9)))
            continue
        ledger.commit(res, Spend(cost_usd=cost))
        seen.append("granted")
    if isinstance(ledger, RedisLedger):
        ledger.flush()
    used = ledger.scope_usage(ref.key)
    assert isinstance(used, Usage)
    seen.append((used.model_calls, round(used.cost_usd, 9)))
    return seen


def test_refusals_after_the_upgrade_are_those_of_a_window_that_never_was_a_hash(ledger: RedisLedger) -> None:
    """The same spend (3 calls, $0.80) in a window kept as a hash, in one made by this version,
    and in the in-memory ledger: the same calls are granted and refused the same way."""
    upgraded, fresh, local = _tenant("old"), _tenant("new"), _tenant("local")
    _earlier_window(ledger.client, upgraded, 5000, True, model_calls=3, cost_usd=0.8)
    memory = InMemoryLedger()
    for lg, ref in ((ledger, fresh), (memory, local)):
        lg.open("spend", Budget(), Mode.ENFORCE)
        for _ in range(3):
            lg.commit(lg.reserve("spend", CallKind.MODEL, scopes=(ref,)), Spend(cost_usd=0.8 / 3))
    expected = _outcomes(memory, "m", local)
    assert "granted" in expected and any(type(o) is tuple and o[0] == "max_model_calls" for o in expected)
    assert any(type(o) is tuple and o[0] == "max_cost_usd" for o in expected)
    assert _outcomes(ledger, "a", upgraded) == expected
    assert _outcomes(ledger, "b", fresh) == expected


def test_one_call_over_windows_of_both_layouts(ledger: RedisLedger) -> None:
    """A call whose tenant window is still a hash and whose user window is already a string."""
    tenant = _tenant("mixed")
    user = Scope("user", "ann", ScopeBudget(Budget(max_model_calls=2), parse_window("month"))).ref()
    ledger.open("r", Budget(), Mode.ENFORCE)
    ledger.reserve("r", CallKind.MODEL, scopes=(user,))
    _earlier_window(ledger.client, tenant, 5000, False, model_calls=5)
    ledger.reserve("r", CallKind.MODEL, scopes=(user, tenant))  # the tenant's 6th of 6
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.MODEL, scopes=(tenant, user))
    assert (info.value.refusal.scope, info.value.refusal.reason) == (tenant, "max_model_calls")
    assert [ledger.client.type("budgetspan:scope:" + r.key) for r in (tenant, user)] == [b"string"] * 2
    t, u = ledger.scope_usage(tenant.key), ledger.scope_usage(user.key)
    assert t is not None and u is not None and (t.model_calls, u.model_calls) == (6, 2)
