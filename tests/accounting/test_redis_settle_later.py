"""The Redis ledger settles a call in the next reservation's round trip (``redis_pending``): what
peers see meanwhile (the worst case, never less), when the settlement reaches Redis without a
next call (close, reads, ``settle_lag_s``), and a process killed with a settlement pending."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Spend
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.scopes import Scope, ScopeBudget
from budgetspan.accounting.windows import parse_window
from tests.accounting.redis_server import needs_redis_server, redis, run_figures

pytestmark = needs_redis_server


def _ledger(redis_url: str, lag: float = 60.0) -> RedisLedger:
    """A process's ledger (another instance: another process, but for the server)."""
    return RedisLedger(redis.Redis.from_url(redis_url), settle_lag_s=lag)


def _held(ledger: RedisLedger, run_id: str) -> tuple[float, float]:
    """(dollars held, dollars spent) on the run's hash."""
    held, spent = run_figures(ledger.client, ledger.key(run_id), "held:cost_usd", "cost_usd")
    return float(held or 0), float(spent or 0)


def test_a_peer_sees_the_worst_case_until_the_settlement_is_sent_then_the_spend(redis_url: str) -> None:
    a, b = _ledger(redis_url), _ledger(redis_url)
    budget = Budget(max_cost_usd=1.0)
    a.open("r", budget, Mode.ENFORCE)
    b.open("r", budget, Mode.ENFORCE)
    a.commit(a.reserve("r", CallKind.MODEL, worst_case_cost=0.5), Spend(10, 5, cost_usd=0.1))
    assert _held(a, "r") == (0.5, 0.0)  # pending: the worst case stays held on Redis
    with pytest.raises(LedgerRefused) as info:  # the peer is held to it: more spend, never less
        b.reserve("r", CallKind.MODEL, worst_case_cost=0.6)
    assert info.value.refusal.reason == "max_cost_usd"
    assert a.close("r").cost_usd == 0.1  # closing sends it (and reads it back)
    assert _held(b, "r") == (0.0, 0.1)
    b.commit(b.reserve("r", CallKind.MODEL, worst_case_cost=0.6), Spend(1, 1, cost_usd=0.6))
    assert b.usage("r").cost_usd == pytest.approx(0.7)  # a read sends this process's own first
    b.close("r")


def test_the_next_reservation_settles_first_so_this_process_sees_its_own_spend(redis_url: str) -> None:
    a = _ledger(redis_url)
    a.open("own", Budget(max_cost_usd=1.0, max_total_tokens=100), Mode.ENFORCE)
    reached = a.commit(a.reserve("own", CallKind.MODEL, worst_case_cost=0.9), Spend(60, 40, cost_usd=0.5))
    assert reached is not None and reached.reason == "max_total_tokens"  # as the settle script says
    with pytest.raises(LedgerRefused) as info:  # the settlement ahead used up the tokens
        a.reserve("own", CallKind.MODEL)
    assert info.value.refusal.reason == "max_total_tokens"
    assert _held(a, "own") == (0.0, 0.5)
    a.close("own")


def test_a_pending_settlement_is_sent_after_the_lag_without_another_call(redis_url: str) -> None:
    a, b = _ledger(redis_url, lag=0.05), _ledger(redis_url)
    a.open("lag", Budget(max_cost_usd=1.0), Mode.ENFORCE)
    b.open("lag", Budget(max_cost_usd=1.0), Mode.ENFORCE)
    a.commit(a.reserve("lag", CallKind.MODEL, worst_case_cost=0.5), Spend(cost_usd=0.2))
    deadline = time.monotonic() + 10
    while _held(b, "lag") != (0.0, 0.2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _held(b, "lag") == (0.0, 0.2)
    a.close("lag")
    b.close("lag")


def _commit_and_die(redis_url: str) -> None:
    ledger = _ledger(redis_url)
    ledger.open("killed", Budget(max_cost_usd=1.0), Mode.ENFORCE)
    ledger.commit(ledger.reserve("killed", CallKind.MODEL, worst_case_cost=0.5), Spend(cost_usd=0.1))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_killed_with_a_settlement_pending_leaves_its_worst_case_held(redis_url: str) -> None:
    peer = _ledger(redis_url)
    peer.open("killed", Budget(max_cost_usd=1.0), Mode.ENFORCE)
    child = multiprocessing.get_context("spawn").Process(target=_commit_and_die, args=(redis_url,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert _held(peer, "killed") == (0.5, 0.0)  # never less than the call could have spent
    u = peer.usage("killed")
    assert u.model_calls == 1 and u.cost_usd == 0.0
    with pytest.raises(LedgerRefused):
        peer.reserve("killed", CallKind.MODEL, worst_case_cost=0.6)
    peer.close("killed")


_EXIT_WITHOUT_CLOSE = """
import sys
import redis
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Mode, Spend
from budgetspan.accounting.redis_ledger import RedisLedger

ledger = RedisLedger(redis.Redis.from_url(sys.argv[1]), settle_lag_s=600)
ledger.open("exits", Budget(max_cost_usd=1.0), Mode.ENFORCE)
ledger.commit(ledger.reserve("exits", CallKind.MODEL, worst_case_cost=0.5), Spend(cost_usd=0.1))
"""


def test_a_process_that_exits_without_closing_its_run_sends_its_pending_settlement(redis_url: str) -> None:
    peer = _ledger(redis_url)
    peer.open("exits", Budget(max_cost_usd=1.0), Mode.ENFORCE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", _EXIT_WITHOUT_CLOSE, redis_url], env=env, check=True, timeout=60)
    assert _held(peer, "exits") == (0.0, 0.1)  # sent at exit: the actual spend, nothing held
    peer.close("exits")


def _commit_in_child(redis_url: str, run_id: str, inherited: RedisLedger | None) -> None:
    """A call, then the child returns without closing the run (its settlement still pending)."""
    ledger = inherited if inherited is not None else _ledger(redis_url, lag=600)
    ledger.open(run_id, Budget(max_cost_usd=1.0), Mode.ENFORCE)
    ledger.commit(ledger.reserve(run_id, CallKind.MODEL, worst_case_cost=0.5), Spend(cost_usd=0.1))


@pytest.mark.parametrize(("start", "inherit"), [("fork", False), ("forkserver", False), ("fork", True)])
def test_a_multiprocessing_child_that_returns_without_closing_sends_its_pending_settlement(
    redis_url: str, start: str, inherit: bool
) -> None:
    """A multiprocessing child started by fork or forkserver ends with os._exit (no atexit): its
    ledger, its own or one inherited at fork, still sends what is pending when the child ends."""
    run_id = f"child-exits-{start}-{inherit}"
    peer = _ledger(redis_url, lag=600)
    peer.open(run_id, Budget(max_cost_usd=1.0), Mode.ENFORCE)
    child = multiprocessing.get_context(start).Process(
        target=_commit_in_child, args=(redis_url, run_id, peer if inherit else None)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert _held(peer, run_id) == (0.0, 0.1)  # the actual spend, no worst case left held
    peer.close(run_id)


def test_a_settlement_with_scope_windows_rides_ahead_and_its_warning_fires(redis_url: str) -> None:
    heard: list[Any] = []
    tenant = Scope(
        "tenant",
        "settle-later",
        ScopeBudget(Budget(max_cost_usd=1.0), parse_window("day"), warn_at=0.5, on_warn=heard.append),
    )
    a = _ledger(redis_url)
    a.client.delete("budgetspan:scope:" + tenant.ref().key)
    a.open("s", Budget(), Mode.ENFORCE)
    refs = (tenant.ref(),)
    a.commit(a.reserve("s", CallKind.MODEL, worst_case_cost=0.2, scopes=refs), Spend(cost_usd=0.6))
    assert heard == []  # pending: nothing reached the window yet
    res = a.reserve("s", CallKind.MODEL, worst_case_cost=0.2, scopes=(tenant.ref(),))  # one round trip
    assert [(w.limit, w.used) for w in heard] == [("max_cost_usd", 0.6)]
    with pytest.raises(LedgerRefused) as info:  # 0.6 spent + 0.2 held + 0.3 > 1
        a.reserve("s", CallKind.MODEL, worst_case_cost=0.3, scopes=(tenant.ref(),))
    assert info.value.refusal.scope is not None and info.value.refusal.spent == pytest.approx(0.6)
    a.commit(res, Spend(cost_usd=0.1))
    a.close("s")
    used = a.scope_usage(tenant.ref().key)
    assert used is not None and used.cost_usd == pytest.approx(0.7) and used.model_calls == 2


@pytest.mark.parametrize("refused_by", ["run", "tenant"])
def test_a_refused_reservation_still_records_the_settlement_ahead_of_it(
    redis_url: str, refused_by: str
) -> None:
    """The settlement and the reservation share one script, which writes each hash once: a
    reservation refused (by the run or by a window) must not drop the settlement ahead of it."""
    run_calls, tenant_calls = (1, 5) if refused_by == "run" else (5, 1)
    tenant = Scope(
        "tenant", f"ahead-{refused_by}", ScopeBudget(Budget(max_model_calls=tenant_calls), parse_window(None))
    )
    a, peer = _ledger(redis_url), _ledger(redis_url)
    a.client.delete("budgetspan:scope:" + tenant.ref().key)
    a.open("ahead", Budget(max_model_calls=run_calls, max_cost_usd=1.0), Mode.ENFORCE)
    peer.open("ahead", Budget(max_model_calls=run_calls, max_cost_usd=1.0), Mode.ENFORCE)
    a.commit(
        a.reserve("ahead", CallKind.MODEL, worst_case_cost=0.5, scopes=(tenant.ref(),)), Spend(cost_usd=0.2)
    )
    with pytest.raises(LedgerRefused) as info:  # the settlement rides on this refused reservation
        a.reserve("ahead", CallKind.MODEL, worst_case_cost=0.5, scopes=(tenant.ref(),))
    assert (info.value.refusal.scope is None) == (refused_by == "run")
    assert _held(peer, "ahead") == (0.0, 0.2)  # settled on Redis: the worst case given back, spend added
    used = peer.scope_usage(tenant.ref().key)
    assert used is not None and used.cost_usd == pytest.approx(0.2) and used.model_calls == 1
    assert a.usage("ahead").cost_usd == pytest.approx(0.2)
    a.close("ahead")
    peer.close("ahead")


def _reserve_in_child(ledger: RedisLedger) -> None:
    ledger.open("forked", Budget(max_cost_usd=10.0), Mode.ENFORCE)  # (a scope of its own on the run)
    ledger.commit(ledger.reserve("forked", CallKind.MODEL, worst_case_cost=0.1), Spend(cost_usd=0.05))
    ledger.close("forked")


def test_a_forked_child_does_not_send_its_parents_pending_settlement(redis_url: str) -> None:
    parent = _ledger(redis_url)
    parent.open("forked", Budget(max_cost_usd=10.0), Mode.ENFORCE)
    parent.commit(parent.reserve("forked", CallKind.MODEL, worst_case_cost=0.5), Spend(cost_usd=0.2))
    child = multiprocessing.get_context("fork").Process(target=_reserve_in_child, args=(parent,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert _held(parent, "forked") == (0.5, 0.05)  # the child's call only: the parent's is its own
    u = parent.close("forked")
    assert (u.model_calls, u.cost_usd) == (2, 0.25)  # each settlement sent once
