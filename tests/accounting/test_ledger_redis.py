"""The shared ledger on a real Redis server: the same limits hold across processes."""

from __future__ import annotations

import multiprocessing
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from budgetspan.accounting import redis_ledger as redis_ledger_module
from budgetspan.accounting.budget import Budget, ToolLimits
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Reservation, Spend
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.redis_scripts import COST_CAP, TOKEN_CAP
from budgetspan.accounting.redis_wire import VERSION
from budgetspan.accounting.scopes import Scope, ScopeBudget
from budgetspan.accounting.windows import parse_window
from tests.accounting.redis_server import frozen, needs_redis_server, redis, run_figures, start_redis, stop

pytestmark = needs_redis_server


@pytest.fixture
def ledger(redis_url: str) -> RedisLedger:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return RedisLedger(client)


def test_count_limits_and_release(ledger: RedisLedger) -> None:
    ledger.open("r", Budget(max_model_calls=2, max_steps=3), Mode.ENFORCE)
    a = ledger.reserve("r", CallKind.MODEL)
    ledger.reserve("r", CallKind.MODEL)
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.MODEL)
    assert (info.value.refusal.reason, info.value.refusal.limit) == ("max_model_calls", 2)
    ledger.release(a)
    ledger.reserve("r", CallKind.MODEL)
    ledger.reserve("r", CallKind.TOOL, tool="t")
    with pytest.raises(LedgerRefused, match="max_steps"):
        ledger.reserve("r", CallKind.TOOL, tool="t")
    assert ledger.usage("r").model_calls == 2


def test_tokens_dollars_and_worst_case(ledger: RedisLedger) -> None:
    ledger.open("r", Budget(max_cost_usd=0.10, max_total_tokens=1000), Mode.ENFORCE)
    res = ledger.reserve("r", CallKind.MODEL)
    assert ledger.commit(res, Spend(100, 50, 10, 0, 5, 0.04)) is None
    with pytest.raises(LedgerRefused, match="max_cost_usd"):
        ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.07)
    res = ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.05)
    reached = ledger.commit(res, Spend(800, 100, cost_usd=0.01))
    assert reached is not None and reached.reason == "max_total_tokens"
    u = ledger.usage("r")
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.reasoning_tokens) == (900, 150, 10, 5)
    assert u.cost_usd == pytest.approx(0.05)


def test_worst_cases_are_held_until_the_call_settles(ledger: RedisLedger) -> None:
    """Held for cost, input and output tokens; commit and release give them back in full."""
    ledger.open("r", Budget(max_cost_usd=0.10, max_input_tokens=100, max_output_tokens=100), Mode.ENFORCE)
    first = ledger.reserve(
        "r", CallKind.MODEL, worst_case_cost=0.06, worst_case_input_tokens=60, worst_case_tokens=60
    )
    for limit, (cost, tokens_in, tokens_out) in (
        ("max_cost_usd", (0.05, 0, 0)),
        ("max_input_tokens", (0.0, 41, 0)),
        ("max_output_tokens", (0.0, 0, 41)),
    ):
        with pytest.raises(LedgerRefused) as info:  # held by the call in flight
            ledger.reserve(
                "r",
                CallKind.MODEL,
                worst_case_cost=cost,
                worst_case_input_tokens=tokens_in,
                worst_case_tokens=tokens_out,
            )
        assert info.value.refusal.reason == limit
    ledger.commit(first, Spend(10, 10, cost_usd=0.01))
    second = ledger.reserve(
        "r", CallKind.MODEL, worst_case_cost=0.09, worst_case_input_tokens=90, worst_case_tokens=90
    )
    ledger.release(second)
    ledger.reserve(
        "r", CallKind.MODEL, worst_case_cost=0.09, worst_case_input_tokens=90, worst_case_tokens=90
    )
    held = run_figures(
        ledger.client, ledger.key("r"), "held:cost_usd", "held:input_tokens", "held:output_tokens"
    )
    assert (float(held[0]), int(held[1]), int(held[2])) == (0.09, 90, 90)


def test_per_tool_limits_wall_clock_cancel_and_observe(ledger: RedisLedger) -> None:
    ledger.open("t", Budget(tools={"search": ToolLimits(max_calls=1)}), Mode.ENFORCE)
    ledger.reserve("t", CallKind.TOOL, tool="search")
    with pytest.raises(LedgerRefused, match="tool.max_calls"):
        ledger.reserve("t", CallKind.TOOL, tool="search")
    ledger.reserve("t", CallKind.TOOL, tool="fetch", tool_limits=ToolLimits(max_calls=1))
    with pytest.raises(LedgerRefused, match="tool.max_calls"):
        ledger.reserve("t", CallKind.TOOL, tool="fetch", tool_limits=ToolLimits(max_calls=1))

    opened = time.monotonic()  # before open: the server-side start is no earlier than this
    ledger.open("w", Budget(max_wall_clock_s=1.0), Mode.ENFORCE)
    ledger.reserve("w", CallKind.MODEL)  # 1 s leaves room for a busy machine
    refused: LedgerRefused | None = None
    while refused is None and time.monotonic() < opened + 10:  # poll for the deadline, bounded
        try:
            ledger.reserve("w", CallKind.MODEL)
            time.sleep(0.01)
        except LedgerRefused as e:
            refused = e
    assert refused is not None and "max_wall_clock_s" in str(refused)
    assert time.monotonic() - opened >= 1.0  # the deadline, not before it

    ledger.open("c", Budget(), Mode.OBSERVE)
    assert ledger.cancel("c") and not ledger.cancel("nope")
    with pytest.raises(LedgerRefused, match="cancelled"):
        ledger.reserve("c", CallKind.TOOL)

    ledger.open("o", Budget(max_tool_calls=1), Mode.OBSERVE)
    ledger.reserve("o", CallKind.TOOL)
    res = ledger.reserve("o", CallKind.TOOL)
    assert res.would_refuse is not None and res.would_refuse.reason == "max_tool_calls"
    assert ledger.usage("o").tool_calls == 2


def _racer(url: str, attempts: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    led = RedisLedger(redis.Redis.from_url(url))
    granted = 0
    for _ in range(attempts):
        try:
            led.reserve("shared", CallKind.TOOL, tool="t")
            granted += 1
        except LedgerRefused:
            pass
    out.put(granted)


def test_four_processes_racing_share_one_limit(ledger: RedisLedger, redis_url: str) -> None:
    ledger.open("shared", Budget(max_tool_calls=29), Mode.ENFORCE)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(redis_url, 40, out)) for _ in range(4)]
    for p in procs:
        p.start()
    granted = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(granted) == 29 == ledger.usage("shared").tool_calls


def test_budgetspan_runs_on_the_shared_ledger(ledger: RedisLedger, tracing: object) -> None:
    import budgetspan

    budgetspan.set_ledger(ledger)
    try:

        @budgetspan.tool
        def t() -> int:
            return 1

        with pytest.raises(budgetspan.BudgetExhausted) as info:
            with budgetspan.run("shared-run", max_tool_calls=2, run_id="ticket-42") as run:
                t()
                t()
                t()
        assert info.value.reason == "max_tool_calls"
        assert run.usage.tool_calls == 2 and run.usage.tools_finished == 2
    finally:
        from budgetspan.accounting.memory import InMemoryLedger

        budgetspan.set_ledger(InMemoryLedger())


# --- Redis outages ------------------------------------------------------------------------------


@pytest.fixture
def doomed_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], redis.Redis]]:
    """A redis-server of this test's own, to be killed mid-run."""
    proc, port = start_redis(tmp_path)
    yield proc, redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
    stop(proc)


_kill = stop


def _opened(
    doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis],
    budget: Budget,
    mode: Mode = Mode.ENFORCE,
    **options: Any,
) -> tuple[subprocess.Popen[bytes], RedisLedger]:
    """A Redis ledger (``options``) over the server the test will kill, run "r" open in it."""
    proc, client = doomed_redis
    ledger = RedisLedger(client, **options)
    ledger.open("r", budget, mode)
    return proc, ledger


def test_outage_fails_open_to_a_local_ledger_with_the_same_budget(
    doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    from budgetspan import events

    proc, client = doomed_redis
    errors: list[str] = []

    class Listener:
        def on_internal_error(self, where: str) -> None:
            errors.append(where)

    listener = Listener()
    events.add_listener(listener)
    try:
        ledger = RedisLedger(client)
        ledger.open("r", Budget(max_model_calls=3), Mode.ENFORCE)
        before = ledger.reserve("r", CallKind.MODEL)
        assert ledger.usage("r").model_calls == 1  # on Redis
        _kill(proc)
        ledger.commit(before, Spend(10, 5))  # no exception: committed locally
        # counts go on from what Redis last said (1 call), not from zero (review13)
        granted = [ledger.reserve("r", CallKind.MODEL) for _ in range(2)]
        with pytest.raises(LedgerRefused) as info:
            ledger.reserve("r", CallKind.MODEL)  # ...and the budget still holds in this process
        assert info.value.refusal.reason == "max_model_calls"
        for res in granted:
            ledger.commit(res, Spend(1, 1))
        u = ledger.close("r")
        assert (u.model_calls, u.input_tokens, u.output_tokens) == (3, 12, 7)
        assert errors == ["redis_ledger"]  # reported once for the run, not once per call
        assert "unreachable" in caplog.text
    finally:
        events.remove_listener(listener)


def test_outage_fails_closed_when_asked(doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis]) -> None:
    proc, ledger = _opened(doomed_redis, Budget(max_model_calls=3), on_error="closed")
    held = ledger.reserve("r", CallKind.TOOL, tool="search")
    _kill(proc)
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.MODEL)
    assert info.value.refusal.reason == "ledger_unavailable"
    assert ledger.commit(held, None) is None  # what was reserved still ends cleanly (locally)
    with pytest.raises(ValueError, match="on_error"):
        RedisLedger(doomed_redis[1], on_error="sometimes")


def test_a_run_survives_a_redis_outage(
    doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis], tracing: object
) -> None:
    import budgetspan
    from budgetspan.accounting.memory import InMemoryLedger

    proc, client = doomed_redis
    budgetspan.set_ledger(RedisLedger(client))
    try:

        @budgetspan.tool
        def lookup(i: int) -> int:
            return i

        results = []
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            with budgetspan.run("outage", max_tool_calls=2, run_id="ticket-7"):
                results.append(lookup(1))
                _kill(proc)
                results.append(lookup(2))  # the program goes on through the outage
                results.append(lookup(3))  # third call: refused locally (counted on from 1)
        assert results == [1, 2]
        assert info.value.reason == "max_tool_calls"
    finally:
        budgetspan.set_ledger(InMemoryLedger())


def test_closed_stays_closed_after_other_operations_fail(
    doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis],
) -> None:
    proc, ledger = _opened(doomed_redis, Budget(max_model_calls=2), on_error="closed")
    first, _second = ledger.reserve("r", CallKind.MODEL), ledger.reserve("r", CallKind.MODEL)
    _kill(proc)
    ledger.commit(first, Spend(1, 1))  # fails over Redis, ends locally...
    assert ledger.check("r") is None
    for _ in range(3):  # ...and does not turn the run into a local one with fresh counts
        with pytest.raises(LedgerRefused) as info:
            ledger.reserve("r", CallKind.MODEL)
        assert info.value.refusal.reason == "ledger_unavailable"


def test_closed_never_refuses_in_observe_mode(
    doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis],
) -> None:
    proc, ledger = _opened(doomed_redis, Budget(max_model_calls=1), Mode.OBSERVE, on_error="closed")
    _kill(proc)
    res = ledger.reserve("r", CallKind.MODEL)  # observe mode: accounted locally, not refused
    assert res.fallback and ledger.usage("r").model_calls == 1


def test_releasing_a_reservation_made_before_the_outage(
    doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis],
) -> None:
    proc, ledger = _opened(doomed_redis, Budget(max_model_calls=1, max_tool_calls=1))
    model, tool = ledger.reserve("r", CallKind.MODEL), ledger.reserve("r", CallKind.TOOL, tool="search")
    _kill(proc)
    ledger.release(model)  # made on Redis: nothing to undo here (no negative count)
    ledger.release(tool)  # ...and no KeyError for a tool
    # the run goes on from what Redis last said (review13): both calls counted, as made
    assert ledger.usage("r").model_calls == 1 and ledger.usage("r").tool_calls == 1
    with pytest.raises(LedgerRefused):
        ledger.reserve("r", CallKind.MODEL)  # the budget of 1 still holds


# --- one round trip per reserve and per settle -------------------------------------------------


def test_the_server_clock_is_asked_when_the_deadline_may_be_near(redis_url: str) -> None:
    """A reservation compares the server's clock with the run's deadline (a TIME on the server)
    once this process's reckoning of that clock, made at the open, puts the deadline within the
    open's round trip and the margins (a second, 1% of the limit); before, it leaves TIME out."""
    ledger = RedisLedger(redis.Redis.from_url(redis_url))
    server = redis.Redis.from_url(redis_url)
    ledger.open("far", Budget(max_wall_clock_s=3600), Mode.ENFORCE)
    ledger.open("near", Budget(max_wall_clock_s=0.5), Mode.ENFORCE)
    server.config_resetstat()
    for _ in range(3):
        ledger.reserve("far", CallKind.MODEL)
    assert "cmdstat_time" not in server.info("commandstats")
    ledger.reserve("near", CallKind.MODEL)  # within the margins from the start
    assert server.info("commandstats")["cmdstat_time"]["calls"] == 1
    time.sleep(0.6)
    with pytest.raises(LedgerRefused) as refused:  # the server's clock says the deadline passed
        ledger.reserve("near", CallKind.MODEL)
    assert refused.value.refusal.reason == "max_wall_clock_s"
    # A process that opens a run whose deadline its reckoning puts near asks from its first call.
    sec, _usec = server.time()
    server.hset(ledger.key("far"), "started_at", sec - 3599)
    ledger.open("far", Budget(max_wall_clock_s=3600), Mode.ENFORCE)
    time.sleep(1.1)
    with pytest.raises(LedgerRefused):
        ledger.reserve("far", CallKind.MODEL)


@pytest.mark.parametrize("lag", [0.0, 60.0])
def test_one_round_trip_per_reserve_and_per_settle(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, lag: float
) -> None:
    """Counted on both ends: commands sent by the client, and commands the server ran (one HMGET
    per script, no HGET, HGETALL or TIME from the client). Settling later (``settle_lag_s``), a
    call's settlement rides on the next reservation: one round trip per call."""
    ledger = RedisLedger(redis.Redis.from_url(redis_url), settle_lag_s=lag)
    ledger.client.flushdb()
    every_limit = Budget(
        max_model_calls=100,
        max_tool_calls=100,
        max_steps=200,
        max_input_tokens=10**9,
        max_output_tokens=10**9,
        max_total_tokens=10**9,
        max_cost_usd=1000.0,
        max_retries=100,
        tools={"search": ToolLimits(max_calls=100)},
    )
    ledger.open("r", every_limit, Mode.ENFORCE)
    for _ in range(2):  # the scripts are loaded
        ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(1, 1))
    ledger.flush()
    server = redis.Redis(connection_pool=ledger.client.connection_pool)
    server.config_resetstat()
    sent: list[bytes] = []  # the name of each command sent, whatever packed it
    connection_class = ledger._server.pool.connection_class
    send = connection_class.send_packed_command

    def counted(self: object, command: bytes | list[bytes], check_health: bool = True) -> None:
        packed = b"".join([command] if isinstance(command, bytes) else command)
        sent.append(packed.split(b"\r\n")[2])  # *<n> $<len> NAME ...
        send(self, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", counted)
    before = 0
    for kind, tool in ((CallKind.MODEL, None), (CallKind.TOOL, "search"), (CallKind.RETRY, "search")):
        res = ledger.reserve("r", kind, tool=tool, worst_case_cost=0.01, worst_case_tokens=100)
        assert len(sent) == before + 1, sent[before:]
        assert ledger.commit(res, Spend(10, 20, cost_usd=0.001)) is None
        assert len(sent) == before + (2 if lag == 0 else 1), sent[before:]
        before = len(sent)
    ledger.flush()  # the last settlement, on its own
    assert len(sent) == (6 if lag == 0 else 4) and set(sent) == {b"FCALL"}
    monkeypatch.undo()
    stats = server.info("commandstats")
    ran = {name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()}
    if lag == 0:
        assert ran["fcall"] == 6 and ran["hmget"] == 6
    else:  # a settlement ahead of a reservation: one script, one HMGET for both
        assert ran["fcall"] == 4 and ran["hmget"] == 4
    assert not {"hget", "hgetall", "time", "exists", "eval", "evalsha"} & set(ran), ran
    assert server.object("encoding", ledger.key("r")) == b"hashtable"  # fields found without a scan
    u = ledger.close("r")
    assert (u.model_calls, u.tool_calls, u.retries, u.input_tokens, u.cost_usd) == (3, 1, 1, 32, 0.003)


# --- a live run is never forgotten ---------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_run_whose_key_vanished_is_restored_with_what_this_process_knew(
    redis_url: str, on_error: str, internal_errors: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    ledger = RedisLedger(client, on_error=on_error)
    budget = Budget(max_model_calls=3, max_cost_usd=0.10, tools={"search": ToolLimits(max_calls=2)})
    ledger.open("r", budget, Mode.ENFORCE)
    ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(100, 50, 7, 3, 2, 0.02))
    ledger.commit(ledger.reserve("r", CallKind.TOOL, tool="search"), None, unpriced=True)
    in_flight = ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.05)  # holds $0.05
    known = ledger.usage("r")
    client.delete(ledger.key("r"))  # expired, or deleted by a peer

    with pytest.raises(LedgerRefused) as info:  # $0.02 spent + $0.05 held + $0.04 > $0.10
        ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.04)
    assert info.value.refusal.reason == "max_cost_usd"  # not "no limit", not ledger_unavailable
    restored = ledger.usage("r")
    restored.wall_clock_s = known.wall_clock_s
    assert restored == known  # counts, tokens, dollars, flags and per-tool counts
    assert internal_errors == ["redis_ledger"] and "missing from the Redis ledger" in caplog.text

    ledger.commit(in_flight, Spend(cost_usd=0.01))  # gives back the held $0.05
    ledger.reserve("r", CallKind.TOOL, tool="search")  # the second of 2 searches...
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.TOOL, tool="search")  # ...the third is refused
    assert info.value.refusal.reason == "tool.max_calls"

    client.delete(ledger.key("r"))  # lost again: counted again, logged once for the run
    ledger.reserve("r", CallKind.MODEL)  # 2 model calls made: the third is granted...
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.MODEL)  # ...and the fourth refused
    assert info.value.refusal.reason == "max_model_calls"
    assert internal_errors == ["redis_ledger"] * 2
    assert caplog.text.count("missing from the Redis ledger") == 1


def test_a_restarted_empty_redis_does_not_reset_the_budget(
    tmp_path: Path, internal_errors: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case: 21 of 21 calls went through under a limit of 3 after a restart."""
    proc, port = start_redis(tmp_path)
    try:
        ledger = RedisLedger(redis.Redis(port=port))
        ledger.open("r", Budget(max_model_calls=3), Mode.ENFORCE)
        ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(10, 5))
        ledger.flush()  # the settlement reached Redis before the restart (not left to the lag thread)
        stop(proc)
        proc, _ = start_redis(tmp_path, port)  # the same address, empty (no persistence)
        granted = []
        for _ in range(21):
            try:
                granted.append(ledger.reserve("r", CallKind.MODEL))
            except LedgerRefused as refused:
                assert refused.refusal.reason == "max_model_calls"
        assert len(granted) == 2 and not any(res.fallback for res in granted)  # on Redis, not local
        assert internal_errors == ["redis_ledger"]
        # said once, with what is not restored (scope windows live only on Redis)
        assert [
            r.getMessage().count("Scope windows") for r in caplog.records if "missing" in r.getMessage()
        ] == [1]
        assert ledger.close("r").input_tokens == 10
    finally:
        stop(proc)


def test_a_flushed_function_library_is_loaded_again_and_the_call_counted_once(ledger: RedisLedger) -> None:
    """The scripts are one function library on the server (``FCALL``); ``FUNCTION FLUSH`` (or a
    restart) loses it: the next call loads it again and is counted once, not twice or never."""
    ledger.open("r", Budget(max_model_calls=3), Mode.ENFORCE)
    ledger.reserve("r", CallKind.MODEL)
    ledger.client.function_flush()
    assert ledger.client.function_list() == []
    ledger.reserve("r", CallKind.MODEL)
    loaded = [dict(zip(lib[::2], lib[1::2], strict=True)) for lib in ledger.client.function_list()]
    assert [lib[b"library_name"] for lib in loaded] == [f"budgetspan_{VERSION}".encode()]
    ledger.reserve("r", CallKind.MODEL)
    with pytest.raises(LedgerRefused, match="max_model_calls"):
        ledger.reserve("r", CallKind.MODEL)
    assert ledger.usage("r").model_calls == 3


def test_a_user_not_allowed_functions_gets_the_scripts(ledger: RedisLedger, redis_url: str) -> None:
    """A Redis user without the FUNCTION command (a managed Redis, an ACL) runs the same Lua as
    scripts (EVALSHA), with the same limits."""
    admin = ledger.client
    admin.function_flush()
    admin.acl_setuser("no-functions", enabled=True, nopass=True, keys="*", commands=["+@all", "-function"])
    try:
        limited = RedisLedger(redis.Redis.from_url(redis_url, username="no-functions", password=""))
        limited.open("r", Budget(max_model_calls=2), Mode.ENFORCE)
        limited.reserve("r", CallKind.MODEL)
        limited.reserve("r", CallKind.MODEL)
        with pytest.raises(LedgerRefused, match="max_model_calls"):
            limited.reserve("r", CallKind.MODEL)
        assert not limited._server.functions and admin.function_list() == []
        assert limited.close("r").model_calls == 2
    finally:
        admin.acl_deluser("no-functions")


def test_a_user_allowed_evalsha_but_not_fcall_gets_the_scripts(ledger: RedisLedger, redis_url: str) -> None:
    """An ACL written for scripts (EVAL/EVALSHA, no FCALL nor FUNCTION: what earlier versions
    needed) must still share the run's limits, not fall back to counting apart in each process."""
    admin = ledger.client
    admin.function_flush()
    commands = ["+@read", "+@write", "+@connection", "+eval", "+evalsha", "+script|load", "+time"]
    admin.acl_setuser("scripts-only", enabled=True, nopass=True, keys="*", commands=commands)
    try:
        peers = [
            RedisLedger(redis.Redis.from_url(redis_url, username="scripts-only", password=""))
            for _ in range(2)
        ]
        for peer in peers:
            peer.open("r", Budget(max_model_calls=3), Mode.ENFORCE)
        granted = []
        for peer in peers * 3:
            try:
                granted.append(peer.reserve("r", CallKind.MODEL))
            except LedgerRefused as refused:
                assert refused.refusal.reason == "max_model_calls"
        assert len(granted) == 3 and not any(res.fallback for res in granted)
        assert not peers[0]._server.functions
        assert peers[0].usage("r").model_calls == 3
    finally:
        admin.acl_deluser("scripts-only")


def test_hashes_an_earlier_version_wrote_keep_their_limits_and_spend(ledger: RedisLedger) -> None:
    """Before figures were packed, each figure and limit was a text field: an upgrade must neither
    drop a live run's limits nor reset a window's spend (they are read once, then kept packed)."""
    client = ledger.client
    tenant = Scope("tenant", "upgraded", ScopeBudget(Budget(max_cost_usd=1.0), parse_window("day")))
    window = "budgetspan:scope:" + tenant.ref().key
    client.hset(window, mapping={"model_calls": 3, "cost_usd": "0.90000000000000002"})
    old_run = {"mode": "enforce", "opened": 1, "started_at": client.time()[0], "limit:max_model_calls": 4}
    client.hset(ledger.key("old"), mapping={**old_run, "model_calls": 3, "cost_usd": 0.5})
    ledger.open("old", Budget(max_model_calls=4), Mode.ENFORCE)  # a process of this version joins
    with pytest.raises(LedgerRefused) as info:  # the window's $0.90 + $0.20 > $1
        ledger.reserve("old", CallKind.MODEL, worst_case_cost=0.2, scopes=(tenant.ref(),))
    assert info.value.refusal.scope is not None and info.value.refusal.spent == pytest.approx(0.9)
    ledger.reserve("old", CallKind.MODEL)  # the 4th of 4 calls...
    with pytest.raises(LedgerRefused, match="max_model_calls"):
        ledger.reserve("old", CallKind.MODEL)  # ...the 5th refused
    u = ledger.usage("old")
    assert (u.model_calls, u.cost_usd) == (4, 0.5)
    used = ledger.scope_usage(tenant.ref().key)
    assert used is not None and (used.model_calls, used.cost_usd) == (3, pytest.approx(0.9))


def test_a_run_hash_without_its_figures_counts_from_zero(ledger: RedisLedger) -> None:
    """Its limits (``L``) kept, its figures (``F``) gone (deleted by hand): the scripts count from
    zero on the same limits instead of failing (which would send the run to the local ledger)."""
    ledger.open("no-figures", Budget(max_model_calls=2), Mode.ENFORCE)
    ledger.reserve("no-figures", CallKind.MODEL)
    ledger.client.hdel(ledger.key("no-figures"), "F")
    granted = [ledger.reserve("no-figures", CallKind.MODEL) for _ in range(2)]
    assert not any(res.fallback for res in granted)
    with pytest.raises(LedgerRefused, match="max_model_calls"):
        ledger.reserve("no-figures", CallKind.MODEL)


def test_an_unknown_run_is_not_invented(ledger: RedisLedger) -> None:
    """A process that never opened the run has no budget to restore it with."""
    with pytest.raises(KeyError):
        ledger.reserve("never-opened", CallKind.MODEL)
    assert ledger.add_spend("never-opened", Spend(1, 1)) is None
    assert ledger.check("never-opened") is None
    assert not ledger.cancel("never-opened")
    assert not ledger.client.exists(ledger.key("never-opened"))


# --- workers sharing a run id keep it alive for each other ------------------------------------


def test_workers_sharing_a_run_keep_it_open_until_the_last_closes(redis_url: str) -> None:
    one = RedisLedger(redis.Redis.from_url(redis_url))
    two = RedisLedger(redis.Redis.from_url(redis_url))
    key = one.key("shared")
    one.client.delete(key)
    one.open("shared", Budget(max_tool_calls=3), Mode.ENFORCE)
    two.open("shared", Budget(max_tool_calls=3), Mode.ENFORCE)
    one.reserve("shared", CallKind.TOOL)
    assert one.close("shared").tool_calls == 1
    assert one.client.exists(key)  # the other worker still has it open
    two.reserve("shared", CallKind.TOOL)
    two.reserve("shared", CallKind.TOOL)
    with pytest.raises(LedgerRefused):
        two.reserve("shared", CallKind.TOOL)  # the count went on: 3 of 3
    assert two.close("shared").tool_calls == 3
    assert not one.client.exists(key)  # the last one out deletes it
    one.open("shared", Budget(max_tool_calls=3), Mode.ENFORCE)  # the id opened again later: a new run
    one.reserve("shared", CallKind.TOOL)
    assert one.close("shared").tool_calls == 1  # (the README says so: a fresh budget)


def test_one_process_opening_a_run_twice_keeps_it_until_the_last_close(ledger: RedisLedger) -> None:
    ledger.open("r", Budget(max_model_calls=1), Mode.ENFORCE)
    ledger.open("r", Budget(max_model_calls=1), Mode.ENFORCE)  # a nested scope with the same id
    ledger.reserve("r", CallKind.MODEL)
    ledger.close("r")
    with pytest.raises(LedgerRefused):
        ledger.reserve("r", CallKind.MODEL)  # still one budget
    ledger.close("r")
    assert not ledger.client.exists(ledger.key("r"))


def test_reservations_refresh_the_time_to_live(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run longer than ttl_s does not expire while it is in use: a reservation (a refused one
    too) refreshes the hash's expiry when this process last did it ttl_s/10 ago or more, and
    only then (an EXPIRE per call costs the server ~6% of a reservation)."""
    clock = [1000.0]
    monkeypatch.setattr(redis_ledger_module, "_now", lambda: clock[0])
    ledger = RedisLedger(redis.Redis.from_url(redis_url), ttl_s=600)
    client, key = ledger.client, ledger.key("long")
    ledger.open("long", Budget(max_model_calls=2), Mode.ENFORCE)  # two granted, then refused

    def refused() -> None:
        with pytest.raises(LedgerRefused):
            ledger.reserve("long", CallKind.MODEL)

    for operation in (
        lambda: ledger.reserve("long", CallKind.MODEL),
        refused,  # a refused reservation too
    ):
        client.expire(key, 5)  # about to expire, but refreshed less than 60 s ago: left alone
        clock[0] += 59
        operation()
        assert 0 < client.ttl(key) <= 5
        clock[0] += 1  # 60 s since this process last refreshed it
        operation()
        assert client.ttl(key) > 5


# --- every Redis operation bounded in time -----------------------------------------------------


def _returns_while(proc: subprocess.Popen[bytes], operation: Callable[[], object]) -> object:
    """Run ``operation`` with the server frozen, and return what it returned or raised while the
    server is still frozen. A call without a bound would block until the server wakes: the wait
    here is long only so that a busy machine cannot fail the test."""
    outcome: list[object] = []

    def attempt() -> None:
        try:
            outcome.append(operation())
        except Exception as e:
            outcome.append(e)

    with frozen(proc):
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(60)
        answered = not worker.is_alive()
    worker.join(60)
    assert answered, "blocked on a frozen Redis"
    return outcome[0]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc, port = start_redis(tmp_path)
    yield proc, port
    stop(proc)


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_frozen_redis_does_not_block_a_client_without_a_socket_timeout(
    server: tuple[subprocess.Popen[bytes], int], on_error: str, internal_errors: list[str]
) -> None:
    proc, port = server
    ledger = RedisLedger(redis.Redis(port=port, socket_timeout=None), on_error=on_error)  # default bound
    ledger.open("r", Budget(max_model_calls=5), Mode.ENFORCE)
    outcome = _returns_while(proc, lambda: ledger.reserve("r", CallKind.MODEL))
    if on_error == "open":
        assert isinstance(outcome, Reservation) and outcome.fallback  # accounted locally
    else:
        assert isinstance(outcome, LedgerRefused) and outcome.refusal.reason == "ledger_unavailable"
        # Awake again: the connection that timed out was dropped, so no late reply is read as the
        # answer to a later command (the frozen reservation may have run when the server woke).
        assert ledger.usage("r").model_calls in (0, 1)
        assert not ledger.reserve("r", CallKind.MODEL).fallback
    assert internal_errors == ["redis_ledger"]


def test_connecting_to_a_frozen_redis_is_bounded(server: tuple[subprocess.Popen[bytes], int]) -> None:
    """The kernel accepts the connection; the handshake (HELLO, CLIENT SETINFO) gets no answer."""
    proc, port = server
    ledger = RedisLedger(
        redis.Redis(port=port, socket_timeout=None, socket_connect_timeout=None), timeout_s=0.5
    )
    _returns_while(proc, lambda: ledger.open("r", Budget(max_model_calls=1), Mode.ENFORCE))
    assert ledger.reserve("r", CallKind.MODEL).fallback  # open mode: the run went local


def test_a_frozen_redis_holds_a_call_no_longer_than_the_run_has_left(
    server: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = server
    client = redis.Redis(port=port, socket_timeout=None)
    ledger = RedisLedger(client, timeout_s=3600, on_error="closed")  # a long bound...
    ledger.open("r", Budget(max_wall_clock_s=1.0), Mode.ENFORCE)  # ...but the run has 1 s
    outcome = _returns_while(proc, lambda: ledger.reserve("r", CallKind.MODEL))
    assert isinstance(outcome, LedgerRefused) and outcome.refusal.reason == "ledger_unavailable"


# --- figures beyond 64 bits are clamped ----------------------------------------------------------


def test_absurd_usage_is_clamped_not_taken_for_an_outage(
    ledger: RedisLedger, internal_errors: list[str]
) -> None:
    """The issue's case: prompt_tokens = 10**30 overflowed HINCRBY, read as an outage; open mode then
    counted again from zero and 7 calls went through under a limit of 4."""
    ledger.open("r", Budget(max_model_calls=4), Mode.ENFORCE)
    granted = 0
    for _ in range(7):
        try:
            res = ledger.reserve(
                "r", CallKind.MODEL, worst_case_tokens=10**30, worst_case_input_tokens=10**30
            )
        except LedgerRefused as refused:
            assert refused.refusal.reason == "max_model_calls"
            continue
        granted += 1
        assert not res.fallback
        ledger.commit(res, Spend(10**30, 10**30, 10**30, 10**30, 10**30, float("inf")))
    assert granted == 4 and internal_errors == []
    u = ledger.usage("r")
    assert (u.input_tokens, u.output_tokens, u.reasoning_tokens) == (TOKEN_CAP,) * 3
    assert u.cost_usd == COST_CAP
    held = run_figures(ledger.client, ledger.key("r"), "held:input_tokens", "held:output_tokens")
    assert [int(v) for v in held] == [0, 0]  # every clamped worst case given back in full


def test_absurd_worst_cases_are_refused_by_the_limit(ledger: RedisLedger) -> None:
    ledger.open("r", Budget(max_output_tokens=1000, max_cost_usd=1.0), Mode.ENFORCE)
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.MODEL, worst_case_tokens=10**30)
    assert info.value.refusal.reason == "max_output_tokens"
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.MODEL, worst_case_cost=1e300)
    assert info.value.refusal.reason == "max_cost_usd"
    assert ledger.usage("r").model_calls == 0
