"""Extending a run's limits (``Ledger.extend``) in both ledgers, the reserve for the final answer
on the wall clock, and an extension granted in one process seen by another sharing the run on a
real redis-server."""

from __future__ import annotations

import multiprocessing

import pytest

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Ledger, LedgerRefused, Mode
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_ledger import RedisLedger
from tests.accounting.redis_server import needs_redis_server, redis


def test_extend_raises_the_limits_that_are_set(ledger: Ledger) -> None:
    ledger.open("r", Budget(max_model_calls=1, max_cost_usd=0.25), Mode.ENFORCE)
    ledger.reserve("r", CallKind.MODEL)
    with pytest.raises(LedgerRefused, match="max_model_calls"):
        ledger.reserve("r", CallKind.MODEL)
    budget = ledger.extend("r", {"max_model_calls": 2, "max_cost_usd": 0.1, "max_tool_calls": 5})
    assert budget.max_model_calls == 3 and budget.max_cost_usd == pytest.approx(0.35)
    assert budget.max_tool_calls is None  # an unset limit stays unset
    ledger.reserve("r", CallKind.MODEL)
    ledger.reserve("r", CallKind.MODEL)
    with pytest.raises(LedgerRefused, match="max_model_calls"):
        ledger.reserve("r", CallKind.MODEL)
    with pytest.raises(KeyError):
        ledger.extend("unknown", {"max_model_calls": 1})


def test_an_extension_keeps_the_reserve_for_the_final_answer(ledger: Ledger) -> None:
    budget = Budget(max_tool_calls=2, reserve_for_final={"max_tool_calls": 1})
    ledger.open("r", budget, Mode.ENFORCE)
    ledger.reserve("r", CallKind.TOOL)
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.TOOL)
    assert info.value.refusal.limit == 1
    ledger.extend("r", {"max_tool_calls": 1})  # 3 in all, 1 still kept
    ledger.reserve("r", CallKind.TOOL)
    with pytest.raises(LedgerRefused):
        ledger.reserve("r", CallKind.TOOL)
    ledger.reserve("r", CallKind.TOOL, final=True)


def test_a_wall_clock_reserve_closes_other_phases_early() -> None:
    now = [0.0]
    ledger = InMemoryLedger(clock=lambda: now[0])
    ledger.open("r", Budget(max_wall_clock_s=10, reserve_for_final={"max_wall_clock_s": 4}), Mode.ENFORCE)
    now[0] = 7.0
    with pytest.raises(LedgerRefused, match="max_wall_clock_s") as info:
        ledger.reserve("r", CallKind.MODEL)
    assert info.value.refusal.limit == 6
    ledger.reserve("r", CallKind.MODEL, final=True)
    now[0] = 10.0
    with pytest.raises(LedgerRefused, match="max_wall_clock_s"):
        ledger.reserve("r", CallKind.MODEL, final=True)


# --- two processes sharing a run on Redis ----------------------------------------------------------


def _worker(url: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Another process on the same run: its own budget says 2 tool calls, the hash says more."""
    import budgetspan

    budgetspan.set_ledger(RedisLedger(redis.Redis.from_url(url)))

    @budgetspan.tool
    def lookup(i: int) -> int:
        return i

    done = 0
    try:
        with budgetspan.run("shared", max_tool_calls=2, run_id="ticket-7"):
            for i in range(10):
                lookup(i)
                done += 1
    except budgetspan.BudgetExhausted as e:
        out.put((done, e.reason, e.limit))
        return
    out.put((done, None, None))


@needs_redis_server
def test_an_extension_granted_in_one_process_holds_in_another(redis_url: str, tracing: object) -> None:
    import budgetspan

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    budgetspan.set_ledger(RedisLedger(client))

    @budgetspan.tool
    def lookup(i: int) -> int:
        return i

    approvals: list[str] = []

    def supervisor(reached: budgetspan.LimitReached) -> budgetspan.Decision:
        approvals.append(reached.reason)
        return budgetspan.Extend(max_tool_calls=3, reason="approval")

    try:
        with budgetspan.run("shared", max_tool_calls=2, run_id="ticket-7", on_limit=supervisor) as run:
            lookup(1)
            lookup(2)
            lookup(3)  # refused at 2: the supervisor extends the run to 5, on the Redis hash
            ctx = multiprocessing.get_context("spawn")
            out = ctx.Queue()
            proc = ctx.Process(target=_worker, args=(redis_url, out))
            proc.start()
            done, reason, limit = out.get(timeout=60)
            proc.join(10)
            assert run.usage.tool_calls == 5
        assert approvals == ["max_tool_calls"]
        # The worker opened the run with max_tool_calls=2 but was held to the extended 5.
        assert (done, reason, limit) == (2, "max_tool_calls", 5)
        assert run.explanation == "Extended once by 3 tool calls after approval."
    finally:
        budgetspan.set_ledger(InMemoryLedger())
