"""Jobs 16: the live attempt's lease, in one process on a real redis-server (two deliveries of one
job in two threads, as in a threads pool; a holder that died; an end not yet notified). Celery's
own redeliveries are in test_jobs16_redelivery.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from budgetspan.jobs import JobEnd, JobSpec, JobStore, execute
from budgetspan.jobs.ledger import JobLedger
from budgetspan.jobs.notify import deliver
from tests.accounting.redis_server import redis
from tests.jobs.test_notify import Webhook


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), lease_s=0.6)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(fail=0)
    yield hook
    hook.stop()


def _in_thread(target: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def _until(check: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_second_delivery_of_a_live_job_waits_for_it_and_runs_nothing(
    store: JobStore, webhook: Webhook
) -> None:
    store = JobStore(store.client, lease_s=1.5)  # renewed every 0.5 s, even on a busy machine
    spec = JobSpec.new("twice", {"max_model_calls": 2}, notify=webhook.url, job_id="lease-live")
    store.submitted(spec.job_id, spec.workflow)
    ledger = JobLedger(store.client, store)
    release, ran = threading.Event(), []

    def work() -> str:
        ran.append(threading.get_ident())
        release.wait(10)
        return "done"

    first, first_out = _in_thread(lambda: execute(spec, work, (), {}, ledger))
    _until(lambda: len(ran) == 1)
    second, second_out = _in_thread(lambda: execute(spec, work, (), {}, ledger))
    _until(lambda: store.state(spec.job_id).get("duplicates") == "1")
    time.sleep(2 * store.lease_s)  # the live attempt renews its lease: the duplicate keeps waiting
    assert len(ran) == 1 and second.is_alive()
    release.set()
    first.join(10)
    second.join(10)
    assert first_out[0].outcome == "success" and first_out[0].attempts == 1
    assert second_out == [None]  # it found the job ended: nothing run, nothing recorded
    assert len(ran) == 1 and len(webhook.posts) == 1
    assert not store.client.exists(store.key(spec.job_id, "lease"))


def test_a_delivery_takes_over_when_the_live_attempt_s_lease_expires(store: JobStore) -> None:
    """The holder died (no renewal): the waiting delivery runs the job as the next attempt."""
    spec = JobSpec.new("twice", {"max_model_calls": 2}, job_id="lease-dead")
    store.submitted(spec.job_id, spec.workflow)
    assert store.begin(spec.job_id, "dead-worker")[:2] == ("go", 1)
    end = execute(spec, lambda: "done", (), {}, JobLedger(store.client, store))
    assert end is not None and end.outcome == "success" and end.attempts == 2
    assert store.state(spec.job_id)["duplicates"] == "1"


def test_an_end_recorded_by_the_live_attempt_is_notified_by_it_alone(
    store: JobStore, webhook: Webhook
) -> None:
    """A delivery between the live attempt's end and its notification waits for the notification
    (was: both could send it)."""
    store = JobStore(store.client, lease_s=30)  # the holder below does not renew it
    spec = JobSpec.new("twice", {"max_model_calls": 2}, notify=webhook.url, job_id="lease-end")
    store.submitted(spec.job_id, spec.workflow)
    store.begin(spec.job_id, "live-worker")
    end = JobEnd(spec.job_id, "success", "Done after 0 model calls", {})
    assert store.end(end)
    late, late_out = _in_thread(
        lambda: execute(spec, lambda: "again", (), {}, JobLedger(store.client, store))
    )
    _until(lambda: store.state(spec.job_id).get("duplicates") == "1")
    assert webhook.posts == []
    assert deliver(store, webhook.url, end)
    assert store.release_lease(spec.job_id, "live-worker")
    late.join(10)
    assert late_out == [None] and len(webhook.posts) == 1
