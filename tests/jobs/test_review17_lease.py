"""Review 17: attacks on the live attempt's lease (``jobs.lease``) with a real redis-server: no
renewal thread left after the jobs end, Redis down and back during an attempt, a lease that
expired while no other delivery took it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetspan.jobs import JobSpec, JobStore, execute
from budgetspan.jobs.lease import Lease
from budgetspan.jobs.ledger import JobLedger
from tests.accounting.redis_server import redis, start_redis, stop

PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


def _lease_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("budgetspan-lease-")]


def test_no_renewal_thread_is_left_after_the_jobs_end(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), lease_s=0.6)
    ledger = JobLedger(store.client, store)
    for i in range(20):
        spec = JobSpec.new("many", {"max_model_calls": 1}, job_id=f"r17-threads-{i}")
        store.submitted(spec.job_id, spec.workflow)
        end = execute(spec, lambda: "done", (), {}, ledger)
        assert end is not None and end.outcome == "success"
    deadline = time.monotonic() + 10
    while _lease_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _lease_threads() == []


@pytest.fixture
def persistent(tmp_path: Path) -> Iterator[tuple[Path, list[object]]]:
    procs: list[object] = []
    yield tmp_path, procs
    for proc in procs:
        stop(proc)  # type: ignore[arg-type]


def test_a_lease_outlives_redis_down_for_less_than_lease_s(
    persistent: tuple[Path, list[object]],
) -> None:
    directory, procs = persistent
    proc, port = start_redis(directory, None, *PERSISTENT)
    procs.append(proc)
    store = JobStore(redis.Redis(port=port, socket_timeout=1), lease_s=3)
    assert store.begin("r17-flap", "me")[0] == "go"
    lease = Lease(store, "r17-flap", "me").start()
    stop(proc)  # down for about one beat (1 s): renewals fail, the program goes on
    time.sleep(1.2)
    proc, _ = start_redis(directory, port, *PERSISTENT)
    procs.append(proc)
    time.sleep(1.5)  # a beat on the server that came back
    assert not lease.lost
    assert store.client.get(store.key("r17-flap", "lease")) == b"me"
    lease.close()
    assert not store.client.exists(store.key("r17-flap", "lease"))


def test_a_lease_expired_while_no_one_took_it_is_taken_back(redis_url: str) -> None:
    """The holder missed its beats (frozen, cut off, or Redis restarted empty) but no other
    delivery took the job: its next beat holds the lease again. Was: it gave up for good ("lost
    its lease"), and any later delivery ran the job alongside it."""
    store = JobStore(redis.Redis.from_url(redis_url), lease_s=0.9)
    assert store.begin("r17-expired", "me")[0] == "go"
    lease = Lease(store, "r17-expired", "me").start()
    store.client.delete(store.key("r17-expired", "lease"))  # (as expired, or lost with Redis)
    time.sleep(1.0)  # three beats
    assert not lease.lost
    assert store.begin("r17-expired", "other")[0] == "busy"
    lease.close()


def test_a_lease_another_delivery_took_is_lost(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), lease_s=0.9)
    assert store.begin("r17-taken", "me")[0] == "go"
    lease = Lease(store, "r17-taken", "me").start()
    store.client.set(store.key("r17-taken", "lease"), "other", px=5000)
    deadline = time.monotonic() + 10
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.lost
    lease.close()
    assert store.client.get(store.key("r17-taken", "lease")) == b"other"  # not its to give up
