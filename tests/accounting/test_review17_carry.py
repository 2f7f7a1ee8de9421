"""Review 17: attacks on the carry of calls made during a Redis outage (``redis_carry``), against a
real redis-server: many threads making calls while others carry, Redis going down and up several
times in one run, a day that rolled over before the carry, exit with Redis frozen."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from budgetspan.accounting import windows
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Mode
from budgetspan.accounting.redis_ledger import RedisLedger
from tests.accounting.redis_server import needs_redis_server, redis
from tests.accounting.test_redis_carry import Server, _call, _ledger, _tenant, server

pytestmark = needs_redis_server
__all__ = ["server"]
ROOT = Path(__file__).resolve().parents[2]


def _go_local(ledger: RedisLedger, server: Server, run: str) -> None:
    """Open ``run`` and make it go local: Redis down at its first call."""
    ledger.open(run, Budget(), Mode.OBSERVE)
    with server.down():
        _call(ledger, run, _tenant())


def test_calls_made_in_many_threads_while_others_carry_are_each_counted_once(
    server: Server, internal_errors: list[str]
) -> None:
    """Was: a carry's own record's open carried again (``open`` calls ``carry_back``), nested as
    deep as the threads kept noting calls: RecursionError, the batch taken lost."""
    ledger, tenant = _ledger(server.port), _tenant(max_model_calls=10**6)
    runs = [f"r{i}" for i in range(6)]
    for run in runs:
        _go_local(ledger, server, run)  # each run accounted in the process from now on
    internal_errors.clear()
    calls, done = 400, threading.Event()
    depth, deepest = threading.local(), [0]
    carry = ledger._carry

    def counted(*args: Any) -> Any:  # (how deep carries nest)
        depth.n = getattr(depth, "n", 0) + 1
        deepest[0] = max(deepest[0], depth.n)
        try:
            return carry(*args)
        finally:
            depth.n -= 1

    ledger._carry = counted  # type: ignore[method-assign]

    def caller(run: str) -> None:
        for _ in range(calls):
            _call(ledger, run, tenant)

    def carrier() -> None:
        while not done.is_set():
            ledger.scope_usage(tenant.ref().key)

    callers = [threading.Thread(target=caller, args=(run,)) for run in runs]
    carriers = [threading.Thread(target=carrier) for _ in range(2)]
    for t in carriers + callers:
        t.start()
    for t in callers:
        t.join(120)
    done.set()
    for t in carriers:
        t.join(120)
    for _ in range(1000):  # (a slice of timeout_s per carry)
        ledger.carry_back()
    used = ledger.scope_usage(tenant.ref().key)
    assert used is not None and used.model_calls == len(runs) * (calls + 1)
    assert internal_errors == []
    assert deepest[0] == 1  # one carry at a time in a thread
    assert not [r for r in ledger._known if "carried" in r]  # no carrier record left open


def test_redis_down_and_up_three_times_in_one_run(server: Server) -> None:
    ledger, tenant = _ledger(server.port), _tenant()
    ledger.open("r", Budget(), Mode.ENFORCE)
    _call(ledger, "r", tenant)  # on Redis
    for _ in range(3):
        with server.down():
            _call(ledger, "r", tenant)  # in the process (the run stays there)
            _call(ledger, "r", tenant)
            ledger.carry_back()  # Redis still down: kept
        ledger.open("other", Budget(), Mode.ENFORCE)  # Redis answers: carried
        ledger.close("other")
    ledger.close("r")
    used = ledger.scope_usage(tenant.ref().key)
    assert used is not None and used.model_calls == 7


def test_a_call_carried_after_its_day_ended_counts_in_its_own_day(server: Server) -> None:
    """The tenant's window of the day the call was made, not the day it is carried on."""
    day = 86_400.0
    yesterday = (time.time() // day - 1) * day + 3600
    ledger, tenant = _ledger(server.port), _tenant()
    windows.set_clock(lambda: yesterday)
    try:
        old_key = tenant.ref().key
        ledger.open("r", Budget(), Mode.ENFORCE)
        with server.down():
            _call(ledger, "r", tenant)
            _call(ledger, "r", tenant, CallKind.TOOL)
    finally:
        windows.set_clock(None)
    ledger.close("r")  # today: carried
    new_key = tenant.ref().key
    assert new_key != old_key
    old = ledger.scope_usage(old_key)
    assert old is not None and (old.model_calls, old.tool_calls) == (1, 1)
    assert ledger.scope_usage(new_key) in (None, type(old)())


def test_exit_with_redis_frozen_waits_no_longer_than_the_timeouts(server: Server) -> None:
    """Calls to carry and Redis frozen at exit: the process ends (flush, then one carry's open,
    each bounded by ``timeout_s``)."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from tests.accounting.test_redis_carry import _call, _ledger, _tenant
        from budgetspan.accounting.budget import Budget
        from budgetspan.accounting.ledger import Mode
        ledger, tenant = _ledger({server.port}), _tenant()
        ledger.open("r", Budget(), Mode.ENFORCE)
        os.kill({server.proc.pid}, signal.SIGSTOP)
        _call(ledger, "r", tenant)
        _call(ledger, "r", tenant)
        print("exiting", flush=True)
        """
    )
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"}
    with server.frozen():  # (SIGCONT at the end; the child stops it too)
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, timeout=60, cwd=ROOT
        )
        took = time.monotonic() - started
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert b"exiting" in out.stdout
    assert took < 20  # (timeout_s 0.3: a hang would be the subprocess timeout)


def test_spend_asked_during_the_outage_waits_once_and_says_nothing_of_the_carry(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: each ``spend()`` (and each ``remaining_text``) during the outage first tried to open a
    carry's record (a ``timeout_s`` wait), then read the window (another), and logged a warning
    naming that record ("unreachable for run \\x1fcarried-4"), once per ask."""
    ledger, tenant = _ledger(server.port), _tenant()
    ledger.open("r", Budget(), Mode.ENFORCE)
    opened: list[str] = []
    open_ = ledger.open

    def noted_open(run_id: str, *args: Any, **kwargs: Any) -> None:
        opened.append(run_id)
        open_(run_id, *args, **kwargs)

    ledger.open = noted_open  # type: ignore[method-assign]
    with server.frozen():
        _call(ledger, "r", tenant)  # in the process from now on
        caplog.clear()
        for _ in range(3):
            with pytest.raises(redis.RedisError):
                ledger.scope_usage(tenant.ref().key)
    assert opened == []
    assert not [r for r in caplog.records if "carried" in r.getMessage()]
    used = ledger.scope_usage(tenant.ref().key)  # Redis answers: carried, then read
    assert used is not None and used.input_tokens == 10  # (2 calls: its reservation ran on waking)


def test_a_long_outages_calls_are_carried_a_slice_at_a_time(server: Server) -> None:
    """Was: the process's next run's ``open`` carried every call noted, two round trips each, before
    it returned: 100,000 calls held the user's program 224 s there (and so would exit). Now each
    trigger carries for ``timeout_s`` at most, in order, the rest at the next ones."""
    ledger, tenant = _ledger(server.port), _tenant(max_model_calls=10**6)
    _go_local(ledger, server, "r")
    calls = 5000  # 10,000 round trips: longer than timeout_s (0.3 s) on any machine
    for _ in range(calls):
        _call(ledger, "r", tenant)
    ledger.open("next", Budget(), Mode.OBSERVE)
    assert ledger.has_to_carry()  # (not all carried by that one open)
    for _ in range(1000):
        if not ledger.has_to_carry():
            break
        ledger.close("next")
        ledger.open("next", Budget(), Mode.OBSERVE)
    used = ledger.scope_usage(tenant.ref().key)
    assert used is not None and used.model_calls == calls + 1  # each once, none lost


def test_a_run_opened_while_another_thread_carries_does_not_wait_for_that_carry(server: Server) -> None:
    """Was (after the carries were made one at a time): each thread opening a run queued behind
    the carry in progress, then carried a slice itself: N threads, N slices of ``timeout_s``."""
    ledger, tenant = _ledger(server.port), _tenant()
    _go_local(ledger, server, "r")
    _call(ledger, "r", tenant)
    carry, inside, go_on = ledger._carry, threading.Event(), threading.Event()

    def held(*args: Any) -> Any:
        inside.set()
        go_on.wait(30)
        return carry(*args)

    ledger._carry = held  # type: ignore[method-assign]
    carrier = threading.Thread(target=ledger.carry_back)
    carrier.start()
    assert inside.wait(30)
    _call(ledger, "r", tenant)  # noted while the carry is held
    opener = threading.Thread(target=ledger.open, args=("other", Budget(), Mode.OBSERVE))
    opener.start()
    opener.join(10)
    try:
        assert not opener.is_alive()  # it left the carry to the thread carrying
    finally:
        go_on.set()
        carrier.join(30)
        opener.join(30)
    ledger.carry_back()
    used = ledger.scope_usage(tenant.ref().key)
    assert used is not None and used.model_calls == 3
