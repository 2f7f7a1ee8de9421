"""Review 13: the Redis ledger against a server that comes back with older data (restarted from
its last snapshot, a replica promoted with replication lag) and against an eviction policy that
may drop budget keys. A real ``redis-server`` each time, restarted on the same address and dir."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Spend
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.redis_pending import RETRY_S
from budgetspan.accounting.scopes import Scope, ScopeBudget
from budgetspan.accounting.windows import parse_window
from tests.accounting.redis_server import frozen, needs_redis_server, redis, run_figures, start_redis, stop

pytestmark = needs_redis_server


def _granted(ledger: RedisLedger, attempts: int, run: str = "r") -> list[Any]:
    granted = []
    for _ in range(attempts):
        try:
            granted.append(ledger.reserve(run, CallKind.MODEL))
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


def test_a_redis_that_evicts_keys_when_full_is_said_at_once(
    tmp_path: Path, internal_errors: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Found: with ``maxmemory`` and an evicting policy (allkeys-lru; the volatile-* ones too,
    every budget key has an expiry) Redis drops a tenant's daily window when full, and the
    tenant's next call starts a fresh window: measured, 8 calls sent under a tenant's
    max_model_calls=6, nothing said. The process keeps nothing per scope, so it cannot see the
    window go; it now says, at its first connection, that this server can do it."""
    proc, port = start_redis(tmp_path, None, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    try:
        client = redis.Redis(port=port)
        ledger = RedisLedger(client)
        for run in ("a", "b"):
            ledger.open(run, Budget(max_model_calls=3), Mode.ENFORCE)
            ledger.reserve(run, CallKind.MODEL)
            ledger.close(run)
        said = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert len(said) == 1 and "allkeys-lru" in said[0] and "noeviction" in said[0]
        assert internal_errors == ["redis_ledger"]  # (budgetspan_internal_errors_total)
    finally:
        stop(proc)


def test_a_redis_that_refuses_writes_when_full_is_not_warned_about(
    redis_url: str, internal_errors: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """noeviction (or no maxmemory): nothing to say."""
    client = redis.Redis.from_url(redis_url)
    client.config_set("maxmemory", "64mb")
    try:
        ledger = RedisLedger(client)
        ledger.open("r", Budget(max_model_calls=3), Mode.ENFORCE)
        ledger.reserve("r", CallKind.MODEL)
        ledger.close("r")
        assert "maxmemory-policy" not in caplog.text and internal_errors == []
    finally:
        client.config_set("maxmemory", "0")


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_settlement_whose_reply_was_lost_is_not_applied_twice(
    tmp_path: Path, on_error: str, internal_errors: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Found: Redis stopped (SIGSTOP) past ``timeout_s`` while a settlement waited to be sent; the
    settling thread timed out, kept it and sent it again, and when Redis woke it ran every copy
    (a script sent on a dropped connection still runs). Call A's $0.60 worst case was given back
    twice, taking call B's $0.30 with it, and its $0.01 counted twice: held $0.00, spent $0.02,
    and a peer's $0.90 call was granted with B in flight under max_cost_usd=1 (an overshoot past
    the documented bound), nothing said. A settlement whose script may have run is never sent
    again now (its worst case may stay held: more spend seen, never less), and that is said."""
    proc, port = start_redis(tmp_path)
    try:
        mine = RedisLedger(redis.Redis(port=port), on_error=on_error, timeout_s=0.5)  # lag 0.05 s
        peer = RedisLedger(redis.Redis(port=port), on_error=on_error, timeout_s=0.5)
        for ledger in (mine, peer):
            ledger.open("r", Budget(max_cost_usd=1.0), Mode.ENFORCE)
        a = mine.reserve("r", CallKind.MODEL, worst_case_cost=0.6)
        mine.reserve("r", CallKind.MODEL, worst_case_cost=0.3)  # B, in flight to the end
        with frozen(proc):
            mine.commit(a, Spend(cost_usd=0.01))  # pending; the thread sends it, times out...
            time.sleep(0.55 + RETRY_S + 0.95)  # ...and (before) sent it again after RETRY_S
        time.sleep(1.0)  # awake: every copy sent has run
        held, spent = run_figures(redis.Redis(port=port), mine.key("r"), "held:cost_usd", "cost_usd")
        assert held >= 0.3 - 1e-9 and spent <= 0.01 + 1e-9
        with pytest.raises(LedgerRefused):  # $0.01 + B's $0.30 + $0.90 > $1
            peer.reserve("r", CallKind.MODEL, worst_case_cost=0.9)
        assert internal_errors and "may have run" in caplog.text
    finally:
        stop(proc)


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_full_redis_refuses_or_goes_local_and_still_answers_spend(redis_url: str, on_error: str) -> None:
    """``maxmemory`` reached with ``noeviction``: Redis refuses writes (OOM). A call is refused as
    ``ledger_unavailable`` (closed) or accounted in the process (open), never an error to the
    program. Found: a scope window's spend could not be read either (``spend()`` raised
    OutOfMemoryError, and ``budgetspan report``-style dashboards asking went blind while the
    server could answer a read): the read is now a function that does not write (``no-writes``)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    ledger = RedisLedger(client, on_error=on_error)
    tenant = Scope("tenant", "full", ScopeBudget(Budget(max_model_calls=5), parse_window("day")))
    ledger.open("r", Budget(), Mode.ENFORCE)
    ledger.commit(ledger.reserve("r", CallKind.MODEL, scopes=(tenant.ref(),)), Spend(10, 5))
    ledger.flush()
    client.config_set("maxmemory", "1")  # full at once
    try:
        if on_error == "closed":
            with pytest.raises(LedgerRefused) as info:
                ledger.reserve("r", CallKind.MODEL, scopes=(tenant.ref(),))
            assert info.value.refusal.reason == "ledger_unavailable"
        else:
            assert ledger.reserve("r", CallKind.MODEL, scopes=(tenant.ref(),)).fallback
        used = ledger.scope_usage(tenant.ref().key)
        assert used is not None and (used.model_calls, used.input_tokens) == (1, 10)
    finally:
        client.config_set("maxmemory", "0")


def test_a_run_whose_open_never_reached_redis_is_not_called_lost(
    tmp_path: Path, internal_errors: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """``on_error="closed"``, Redis down when the run opens (reported: unreachable), up again
    for its first call. Found: the call restored the run and also warned it "was missing from the
    Redis ledger (Redis restarted ...). Scope windows ... start again from zero", a second
    internal error for a loss that never happened (nothing had been written)."""
    proc, port = start_redis(tmp_path)
    stop(proc)
    ledger = RedisLedger(redis.Redis(port=port), on_error="closed")
    ledger.open("r", Budget(max_model_calls=2), Mode.ENFORCE)
    proc, _ = start_redis(tmp_path, port)
    try:
        assert len(_granted(ledger, 3)) == 2
        assert internal_errors == ["redis_ledger"] and "unreachable" in caplog.text
        assert "missing from the Redis ledger" not in caplog.text
    finally:
        stop(proc)


def test_a_flush_of_every_run_waits_for_a_stopped_redis_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: at exit (and before ``spend()``) every run's pending settlement was sent in turn,
    each waiting ``timeout_s`` for a stopped Redis: 20 runs held a process's exit 10.3 s at
    ``timeout_s=0.5`` (40 s at the default 2 s; "every wait bounded by timeout_s"). Now the first
    failure ends the flush's round trips: the others stay pending (sent later by the thread; at
    exit their worst cases stay held, as a killed process leaves them), and that is said."""
    proc, port = start_redis(tmp_path)
    try:
        ledger = RedisLedger(redis.Redis(port=port), timeout_s=0.5, settle_lag_s=600)
        runs = [f"r{i}" for i in range(5)]
        for run in runs:
            ledger.open(run, Budget(max_model_calls=5), Mode.ENFORCE)
            ledger.commit(ledger.reserve(run, CallKind.MODEL, worst_case_cost=0.5), Spend(10, 5))
        tried = []
        run_script = ledger._server.run

        def counted(*args: Any) -> Any:
            tried.append(args[1])
            return run_script(*args)

        ledger._server.run = counted  # type: ignore[method-assign]
        with frozen(proc):
            ledger.flush()
        assert len(tried) == 1  # one wait, not five
        assert "not sent" in caplog.text
        ledger.flush()  # Redis awake: the four left are sent now
        for run in runs[1:]:
            assert ledger.usage(run).input_tokens == 10
            held = run_figures(redis.Redis(port=port), ledger.key(run), "held:cost_usd")
            assert held == [0.0]
    finally:
        stop(proc)


def test_a_run_that_goes_local_goes_on_from_what_it_knew_not_from_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``on_error="open"``: Redis fails mid-run and the run is accounted in the process. Found: it
    counted again from zero, so each process got the run's whole budget again for the rest of the
    run, however long after Redis came back (measured: a Redis restart mid-call, 4 processes on one
    run of max_model_calls=40: 80 requests sent, 40 of them by the process that went local). Now it
    goes on from the figures and held worst cases Redis last told it (peers' later calls unseen)."""
    proc, port = start_redis(tmp_path)
    try:
        ledger = RedisLedger(redis.Redis(port=port), settle_lag_s=0)
        ledger.open("r", Budget(max_model_calls=4, max_cost_usd=1.0), Mode.ENFORCE)
        for _ in range(2):
            ledger.commit(
                ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.1), Spend(10, 5, cost_usd=0.05)
            )
        in_flight = ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.5)  # 3 of 4, $0.50 held
        stop(proc)
        with pytest.raises(LedgerRefused) as info:  # $0.10 spent + $0.50 held + $0.50 > $1
            ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.5)
        assert info.value.refusal.reason == "max_cost_usd"
        ledger.commit(in_flight, Spend(10, 5, cost_usd=0.05))  # its $0.50 given back, here
        granted = [ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.1)]  # the 4th of 4...
        with pytest.raises(LedgerRefused) as info:
            ledger.reserve("r", CallKind.MODEL)  # ...the 5th refused (was: 4 more granted)
        assert info.value.refusal.reason == "max_model_calls" and all(res.fallback for res in granted)
        used = ledger.close("r")
        assert (used.model_calls, used.input_tokens, used.cost_usd) == (4, 30, pytest.approx(0.15))
        assert "from what it last knew" in caplog.text
    finally:
        stop(proc)


def test_a_run_opened_by_the_call_that_finds_a_new_server_is_opened_once(tmp_path: Path) -> None:
    """The restore after a server change must not count as an opener the run being opened by the
    very call that noticed the change: it was opened twice (its record then outlived its close by
    ``ttl_s``, and the same run id opened again later would have found the old spend)."""
    proc, port = start_redis(tmp_path)
    try:
        ledger = RedisLedger(redis.Redis(port=port), settle_lag_s=0)
        ledger.open("a", Budget(max_model_calls=3), Mode.ENFORCE)
        ledger.reserve("a", CallKind.MODEL)
        redis.Redis(port=port).save()
        stop(proc)
        proc, _ = start_redis(tmp_path, port)
        ledger.open("b", Budget(max_model_calls=3), Mode.ENFORCE)  # this call meets the new server
        ledger.reserve("b", CallKind.MODEL)
        ledger.close("b")
        assert not redis.Redis(port=port).exists(ledger.key("b"))  # its only opener closed it
        assert len(_granted(ledger, 3, "a")) == 2  # (run "a" restored: 1 of 3 made)
    finally:
        stop(proc)
