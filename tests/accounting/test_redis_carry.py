"""Calls a run accounted in its process while Redis could not be reached (``on_error="open"``) are
added to their scope windows on Redis once it answers again, each once (``redis_carry``), against a
real redis-server that is down (killed, then started again from its append-only file) or frozen
with SIGSTOP past the ledger's timeout."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Spend
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.scopes import Scope, ScopeBudget
from budgetspan.accounting.windows import parse_window
from tests.accounting.redis_server import frozen, needs_redis_server, redis, start_redis, stop

pytestmark = needs_redis_server


def _tenant(max_model_calls: int = 100) -> Scope:
    return Scope("tenant", "t", ScopeBudget(Budget(max_model_calls=max_model_calls), parse_window("day")))


def _ledger(port: int) -> RedisLedger:
    return RedisLedger(redis.Redis(port=port), timeout_s=0.3, settle_lag_s=0)


def _call(ledger: RedisLedger, run: str, tenant: Scope, kind: CallKind = CallKind.MODEL) -> None:
    """One call spending 10 input and 5 output tokens and $0.01 (a tool call too: a tool's own spend)."""
    ledger.commit(ledger.reserve(run, kind, scopes=(tenant.ref(),)), Spend(10, 5, cost_usd=0.01))


class Server:
    """A redis-server keeping every write in its append-only file, so that it can go down and
    come back with its windows."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc, self.port = start_redis(directory, None, *PERSISTENT)

    @contextmanager
    def down(self) -> Iterator[None]:
        """Not there (connections refused: nothing sent can have run), then started again."""
        stop(self.proc)
        try:
            yield
        finally:
            self.proc, _ = start_redis(self.directory, self.port, *PERSISTENT)

    def frozen(self) -> AbstractContextManager[None]:
        return frozen(self.proc)


PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    stop(s.proc)


def _outage_run(ledger: RedisLedger, outage: AbstractContextManager[None], tenant: Scope) -> None:
    """Run "r": 2 calls on Redis, then 3 model calls and 1 tool call during the outage."""
    ledger.open("r", Budget(), Mode.ENFORCE)
    for _ in range(2):
        _call(ledger, "r", tenant)
    with outage:
        _calls_in_outage(ledger, tenant)


def _calls_in_outage(ledger: RedisLedger, tenant: Scope) -> None:
    for _ in range(3):
        _call(ledger, "r", tenant)
    _call(ledger, "r", tenant, CallKind.TOOL)


def test_each_call_made_during_the_outage_is_counted_once_in_the_window(server: Server) -> None:
    ledger, tenant = _ledger(server.port), _tenant()
    _outage_run(ledger, server.down(), tenant)
    ledger.close("r")
    for _ in range(3):  # asked again: nothing is carried twice
        used = ledger.scope_usage(tenant.ref().key)
        assert used is not None
        assert (used.model_calls, used.tool_calls) == (5, 1)
        assert (used.input_tokens, used.output_tokens) == (60, 30)
        assert used.cost_usd == pytest.approx(0.06)
    client = redis.Redis(port=server.port)
    assert not client.keys("budgetspan:run:\x1fcarried*")  # the carry's own record is gone


def test_a_call_whose_reservation_got_no_reply_is_counted_more_never_less(server: Server) -> None:
    """Frozen: the first call's reservation times out after it was sent, and Redis runs it when it
    wakes up; the process cannot know, makes the call in the process, and carries it: 6 calls
    counted for 5 made (as a settlement without reply leaves its worst case held: more, never less).
    Its tokens are counted once (the reservation that ran holds no spend)."""
    ledger, tenant = _ledger(server.port), _tenant()
    _outage_run(ledger, server.frozen(), tenant)
    ledger.close("r")
    used = ledger.scope_usage(tenant.ref().key)
    assert used is not None and (used.model_calls, used.tool_calls) == (6, 1)
    assert (used.input_tokens, used.output_tokens) == (60, 30)


def test_another_process_is_refused_by_what_was_spent_during_the_outage(server: Server) -> None:
    """The point of the window: a peer sharing the tenant's 6 calls a day may make 1 more, not 4."""
    ledger, peer, tenant = _ledger(server.port), _ledger(server.port), _tenant(max_model_calls=6)
    _outage_run(ledger, server.down(), tenant)  # 5 model calls (2 on Redis, 3 in the process)
    ledger.close("r")
    ledger.open("next", Budget(), Mode.ENFORCE)  # the process's next run: Redis answers, carried
    peer.open("p", Budget(), Mode.ENFORCE)
    _call(peer, "p", tenant)
    with pytest.raises(LedgerRefused) as refused:
        _call(peer, "p", tenant)
    assert refused.value.refusal.reason == "max_model_calls"


def test_calls_not_carried_while_redis_still_fails_are_carried_later(server: Server) -> None:
    ledger, tenant = _ledger(server.port), _tenant()
    with server.down():
        ledger.open("r", Budget(), Mode.ENFORCE)
        _calls_in_outage(ledger, tenant)
        ledger.close("r")
        ledger.carry_back()  # Redis still down: kept for later, not lost
        ledger.carry_back()
    used = ledger.scope_usage(tenant.ref().key)
    assert used is not None and (used.model_calls, used.tool_calls) == (3, 1)
    assert used.input_tokens == 40


def test_spend_added_after_the_fact_during_the_outage_is_carried(server: Server) -> None:
    """``add_spend`` (usage that arrives after the call, a stream read late) in a local run."""
    ledger, tenant = _ledger(server.port), _tenant()
    with server.down():
        ledger.open("r", Budget(), Mode.ENFORCE)
        _calls_in_outage(ledger, tenant)
        ledger.add_spend("r", Spend(100, 50, cost_usd=0.1), (tenant.ref(),))
        ledger.close("r")
    used = ledger.scope_usage(tenant.ref().key)
    assert used is not None and (used.input_tokens, used.output_tokens) == (140, 70)
    assert used.model_calls == 3


def _carry_in_child(ledger: RedisLedger) -> None:
    ledger.carry_back()


def test_a_child_forked_with_calls_to_carry_leaves_them_to_its_parent(server: Server) -> None:
    """A pre-forking server or pool forks after the outage: parent and child both carried the
    same calls (counted twice) unless the child forgets them."""
    ledger, tenant = _ledger(server.port), _tenant()
    with server.down():
        ledger.open("r", Budget(), Mode.ENFORCE)
        _calls_in_outage(ledger, tenant)
        ledger.close("r")
    child = multiprocessing.get_context("fork").Process(target=_carry_in_child, args=(ledger,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    used = ledger.scope_usage(tenant.ref().key)
    assert used is not None and (used.model_calls, used.tool_calls) == (3, 1)
