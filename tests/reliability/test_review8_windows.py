"""Review 8: 4 processes, each a pool of 4 threads, at a tenant's limit on a real redis-server,
each call in a rolling window (the tenant), a fixed one (the user's day, Asia/Kolkata) and none
(the conversation); the rolling window rolls over mid-race (its record gone, as at its hour's
end). Not one call over in any window, and each record holds exactly the spend of the calls that
reserved in it (a call in flight at the rollover settles in the old record, not the new)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.accounting.redis_server import needs_redis_server, redis

pytestmark = needs_redis_server

ROLLING, DAY, CALL_USD = 40, 60, 0.04
ROLLING_KEY = b"budgetspan:scope:tenant:acme:rolling"


def _worker(url: str, go: Any, out: Any) -> None:
    from budgetspan.accounting.budget import Budget
    from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Spend
    from budgetspan.accounting.redis_ledger import RedisLedger
    from budgetspan.accounting.scopes import Scope, ScopeBudget
    from budgetspan.accounting.windows import parse_window

    ledger = RedisLedger(redis.Redis.from_url(url))
    tenant = ScopeBudget(Budget(max_model_calls=ROLLING, max_cost_usd=100.0), parse_window("rolling-hour"))
    user = ScopeBudget(Budget(max_model_calls=DAY), parse_window("day", "Asia/Kolkata"))
    conversation = ScopeBudget(Budget(max_model_calls=1000, max_total_tokens=10**6))
    name = multiprocessing.current_process().name

    def one_run(i: int) -> int:
        run_id = f"{name}-{i}"
        ledger.open(run_id, Budget(max_model_calls=5), Mode.ENFORCE)
        scopes = [
            Scope("tenant", "acme", tenant),
            Scope("user", "ann", user),
            Scope("conversation", "c", conversation),
        ]
        granted = 0
        for _ in range(5):
            try:
                res = ledger.reserve(
                    run_id,
                    CallKind.MODEL,
                    worst_case_cost=0.05,
                    worst_case_tokens=100,
                    scopes=tuple(s.ref() for s in scopes),
                )
            except LedgerRefused:
                continue
            granted += 1
            time.sleep(0.001)
            ledger.commit(res, Spend(input_tokens=10, output_tokens=20, cost_usd=CALL_USD))
        ledger.close(run_id)
        return granted

    go.wait(60)
    with ThreadPoolExecutor(4) as pool:
        out.put(sum(pool.map(one_run, range(8))))


def _figures(client: Any, key: bytes) -> dict[str, float]:
    from budgetspan.accounting.redis_scripts import WINDOW, WINDOW_FIGURES

    value = client.get(key)
    assert value is not None
    return dict(zip((*WINDOW_FIGURES, "warned", "born"), WINDOW.unpack(value), strict=True))


def test_four_processes_of_thread_pools_across_a_rolling_windows_rollover(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    ctx = multiprocessing.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(redis_url, go, out), name=f"p{i}") for i in range(4)]
    for p in procs:
        p.start()
    rolled = threading.Event()

    def roll_over() -> None:  # its hour is up once it is full (Redis's clock does not move)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            value = client.get(ROLLING_KEY)
            if value is not None and _figures(client, ROLLING_KEY)["model_calls"] >= ROLLING:
                client.delete(ROLLING_KEY)
                rolled.set()
                return
            time.sleep(0.0005)

    watcher = threading.Thread(target=roll_over)
    watcher.start()
    go.set()
    granted = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(10)
    watcher.join()
    assert rolled.is_set()
    assert granted == DAY  # the user's day binds after the rollover: 40 + 20, not one over
    new = _figures(client, ROLLING_KEY)
    day = _figures(client, next(iter(client.keys(b"budgetspan:scope:user:ann:*"))))
    alls = _figures(client, b"budgetspan:scope:conversation:c:all")
    for window, calls in ((new, DAY - ROLLING), (day, DAY), (alls, DAY)):
        assert window["model_calls"] == calls
        assert window["held:cost_usd"] == pytest.approx(0, abs=1e-9)  # (float residue only)
        assert (window["held:input_tokens"], window["held:output_tokens"]) == (0, 0)
        assert window["cost_usd"] == pytest.approx(calls * CALL_USD)
        assert window["input_tokens"] == calls * 10
