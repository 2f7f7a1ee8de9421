"""The shared ledger on a real Redis server: the same limits hold across processes."""

from __future__ import annotations

import multiprocessing
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetspan.accounting.budget import Budget, ToolLimits
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Spend
from budgetspan.accounting.redis_ledger import RedisLedger
from tests.accounting.redis_server import needs_redis_server, redis, start_redis, stop

pytestmark = needs_redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)


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
        granted = [ledger.reserve("r", CallKind.MODEL) for _ in range(3)]  # counts restart at zero
        with pytest.raises(LedgerRefused) as info:
            ledger.reserve("r", CallKind.MODEL)  # ...but the budget still holds in this process
        assert info.value.refusal.reason == "max_model_calls"
        for res in granted:
            ledger.commit(res, Spend(1, 1))
        u = ledger.close("r")
        assert (u.model_calls, u.input_tokens, u.output_tokens) == (3, 13, 8)
        assert errors == ["redis_ledger"]  # reported once for the run, not once per call
        assert "unreachable" in caplog.text
    finally:
        events.remove_listener(listener)


def test_outage_fails_closed_when_asked(doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis]) -> None:
    proc, client = doomed_redis
    ledger = RedisLedger(client, on_error="closed")
    ledger.open("r", Budget(max_model_calls=3), Mode.ENFORCE)
    held = ledger.reserve("r", CallKind.TOOL, tool="search")
    _kill(proc)
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.MODEL)
    assert info.value.refusal.reason == "ledger_unavailable"
    assert ledger.commit(held, None) is None  # what was reserved still ends cleanly (locally)
    with pytest.raises(ValueError, match="on_error"):
        RedisLedger(client, on_error="sometimes")


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
                results.append(lookup(3))
                results.append(lookup(4))  # third call since the outage: refused locally
        assert results == [1, 2, 3]
        assert info.value.reason == "max_tool_calls"
    finally:
        budgetspan.set_ledger(InMemoryLedger())


def test_closed_stays_closed_after_other_operations_fail(
    doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis],
) -> None:
    proc, client = doomed_redis
    ledger = RedisLedger(client, on_error="closed")
    ledger.open("r", Budget(max_model_calls=2), Mode.ENFORCE)
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
    proc, client = doomed_redis
    ledger = RedisLedger(client, on_error="closed")
    ledger.open("r", Budget(max_model_calls=1), Mode.OBSERVE)
    _kill(proc)
    res = ledger.reserve("r", CallKind.MODEL)  # observe mode: accounted locally, not refused
    assert res.fallback and ledger.usage("r").model_calls == 1


def test_releasing_a_reservation_made_before_the_outage(
    doomed_redis: tuple[subprocess.Popen[bytes], redis.Redis],
) -> None:
    proc, client = doomed_redis
    ledger = RedisLedger(client)
    ledger.open("r", Budget(max_model_calls=1, max_tool_calls=1), Mode.ENFORCE)
    model, tool = ledger.reserve("r", CallKind.MODEL), ledger.reserve("r", CallKind.TOOL, tool="search")
    _kill(proc)
    ledger.release(model)  # made on Redis: nothing to undo here (no negative count, no extra call)
    ledger.release(tool)  # ...and no KeyError for a tool this process never counted
    assert ledger.usage("r").model_calls == 0 and ledger.usage("r").tool_calls == 0
    ledger.reserve("r", CallKind.MODEL)
    with pytest.raises(LedgerRefused):
        ledger.reserve("r", CallKind.MODEL)  # the local budget of 1 still holds
