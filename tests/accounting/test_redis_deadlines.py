"""Review: a run's wall-clock limit holds on the Redis ledger as in memory, although a reservation
asks the server's clock only when this process's reckoning puts the deadline near."""

from __future__ import annotations

import time
from typing import Any

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
    busy.client.flushdb()
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


@needs_redis_server
def test_a_late_call_in_observe_mode_is_not_refused_while_a_settlement_holds_the_record(
    redis_url: str,
) -> None:
    """A closed run's late calls reserve through a short-lived record; a settlement of another
    late call (sent on its own, ``_settle``) opens one too. An observe-mode late call made while
    that settlement's record is open must not be refused by the tenant's window (observe mode
    refuses nothing): the record of one mode must not be taken for the other's."""
    from budgetspan.accounting.scopes import Scope, ScopeBudget
    from budgetspan.accounting.windows import parse_window

    ledger = RedisLedger(redis.Redis.from_url(redis_url), settle_lag_s=0)
    ledger.client.flushdb()
    ref = Scope("tenant", "acme", ScopeBudget(Budget(max_model_calls=1), parse_window("day"))).ref()
    ledger.open("r", Budget(), Mode.OBSERVE)
    first = ledger.reserve("r", CallKind.MODEL, scopes=[ref])
    ledger.close("r")
    with ledger._after_close("r", Mode.ENFORCE):  # (what a settlement after the close opens)
        late = ledger.reserve_in_scopes("r", CallKind.MODEL, [ref], (None, None, None), enforce=False)
    assert late is not None and late.would_refuse is not None  # over the tenant's 1: noted only
    ledger.commit(first)
    ledger.commit(late)


def _late_opener(url: str, opened: Any, go: Any, said: Any) -> None:
    """A second process: opens the shared run, then reserves when told to."""
    ledger = RedisLedger(redis.Redis.from_url(url))
    ledger.open("shared-wall", Budget(max_wall_clock_s=2), Mode.ENFORCE)
    opened.set()
    go.wait(30)
    try:
        ledger.reserve("shared-wall", CallKind.MODEL)
        said.put("granted")
    except LedgerRefused as e:
        said.put(e.refusal.reason)


@needs_redis_server
@pytest.mark.parametrize("stopped", [False, True])
def test_a_process_that_opened_a_shared_run_late_or_was_stopped_is_held_to_its_deadline(
    redis_url: str, stopped: bool
) -> None:
    """The run's 2 s start on the first process; a second opens it 1.5 s later (its reckoning
    from the open's reply must not count from its own open), or is stopped (SIGSTOP) past the
    deadline and resumed: its call after the deadline is refused."""
    import multiprocessing
    import os
    import signal

    first = RedisLedger(redis.Redis.from_url(redis_url))
    first.client.flushdb()
    first.open("shared-wall", Budget(max_wall_clock_s=2), Mode.ENFORCE)
    ctx = multiprocessing.get_context("spawn")
    opened, go, said = ctx.Event(), ctx.Event(), ctx.Queue()
    if not stopped:
        time.sleep(1.5)
    child = ctx.Process(target=_late_opener, args=(redis_url, opened, go, said))
    child.start()
    try:
        assert opened.wait(30)
        if stopped:
            assert child.pid is not None
            os.kill(child.pid, signal.SIGSTOP)
            time.sleep(2.2)
            os.kill(child.pid, signal.SIGCONT)  # (before go.set(): it waits for the child)
            go.set()
        else:
            time.sleep(max(0.0, 2.2 - 1.5))
            go.set()
        assert said.get(timeout=30) == "max_wall_clock_s"
    finally:
        child.join(30)
        first.close("shared-wall")
