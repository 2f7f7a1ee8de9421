"""The end of a job is notified at least once, with one idempotency key (real redis-server, and a
loopback HTTP server as the webhook)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from budgetspan.jobs import JobEnd, JobSpec, JobStore, execute
from budgetspan.jobs.ledger import JobLedger
from budgetspan.jobs.notify import deliver
from tests.accounting.redis_server import redis
from tests.http_server import QuietHandler, Serving


class Webhook:
    """Answers 500 to the first ``fail`` POSTs, then 200; keeps every POST's key and body."""

    def __init__(self, fail: int) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.body())
                hook.posts.append((self.headers["Idempotency-Key"], body))
                self.send_response(500 if len(hook.posts) <= fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.http = Serving(Handler).start()
        self.url = f"{self.http.url}/hook"

    def stop(self) -> None:
        self.http.stop()


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url))


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(fail=1)
    yield hook
    hook.stop()


def test_a_failed_webhook_is_retried_with_the_same_key_then_marked_notified(
    store: JobStore, webhook: Webhook
) -> None:
    store.submitted("hook-1", "triage")
    end = JobEnd("hook-1", "success", "Done after 1 model calls", {"draft": "hi"}, result="hi")
    assert store.end(end)
    assert deliver(store, webhook.url, end)
    assert [key for key, _ in webhook.posts] == ["budgetspan-job-end:hook-1"] * 2  # 500, then 200
    assert webhook.posts[-1][1]["outcome"] == "success" and webhook.posts[-1][1]["partial"] == {"draft": "hi"}
    assert store.notified("hook-1")
    assert deliver(store, webhook.url, end) and len(webhook.posts) == 2  # notified: not sent again


def test_an_end_recorded_but_not_notified_is_notified_by_the_redelivered_task(
    store: JobStore, webhook: Webhook
) -> None:
    """A worker that died between recording the end and notifying it: the broker delivers the task
    again; the attempt finds the job ended, runs nothing, and delivers the notification."""
    spec = JobSpec.new("triage", {"max_model_calls": 2}, notify=webhook.url, job_id="hook-2")
    store.submitted(spec.job_id, spec.workflow)
    store.begin(spec.job_id)
    store.end(JobEnd(spec.job_id, "success", "Done after 0 model calls", {}, result=42))
    ran: list[int] = []

    assert execute(spec, lambda: ran.append(1), (), {}, JobLedger(store.client, store)) is None
    assert ran == []  # the job had ended: not run again
    assert [body["result"] for _, body in webhook.posts] == [42, 42]  # the 500, then delivered
    assert store.notified(spec.job_id)


class _Undescribable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this error")


def test_a_job_whose_error_cannot_be_described_still_ends_failed_and_notified(
    store: JobStore, webhook: Webhook
) -> None:
    """``str(error)`` raised while the end was worded: the attempt raised that instead, the job
    stayed running, and nobody was notified."""
    spec = JobSpec.new("triage", {"max_model_calls": 2}, notify=webhook.url, job_id="hook-3")
    store.submitted(spec.job_id, spec.workflow)

    def job() -> None:
        raise _Undescribable()

    end = execute(spec, job, (), {}, JobLedger(store.client, store))
    assert end is not None and end.outcome == "failure"
    assert end.explanation == "Failed: _Undescribable"
    assert store.ended(spec.job_id) is not None and store.notified(spec.job_id)


def test_a_failed_jobs_end_carries_the_errors_text_only_with_content_capture(
    store: JobStore, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from budgetspan import config

    def job() -> None:
        raise LookupError("no customer for ann@example.com")

    spec = JobSpec.new("triage", {"max_model_calls": 2}, notify=webhook.url, job_id="hook-4")
    store.submitted(spec.job_id, spec.workflow)
    end = execute(spec, job, (), {}, JobLedger(store.client, store))
    assert end is not None and end.explanation == "Failed: LookupError"  # what the webhook is sent
    monkeypatch.setattr(config, "_capture_content", True)
    spec = JobSpec.new("triage", {"max_model_calls": 2}, notify=webhook.url, job_id="hook-5")
    store.submitted(spec.job_id, spec.workflow)
    end = execute(spec, job, (), {}, JobLedger(store.client, store))
    assert end is not None and end.explanation == "Failed: LookupError: no customer for ann@example.com"


_ADDRESS = "ann" + ".secret@example.com"  # made at run time: the logged frames show source lines


def refusing_callback(end: JobEnd) -> None:
    """A notify target (``module:function``) that fails quoting what it was given."""
    raise ValueError(f"cannot email {_ADDRESS} about {end.job_id}")


def test_a_failing_notify_callback_is_logged_without_its_text(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    """review11: the user's notify callback's exception was logged whole (``exc_info``), its
    message (a customer's address) included; now its type, as for every other user callback."""
    caplog.set_level(logging.DEBUG)
    store.submitted("hook-9", "triage")
    end = JobEnd("hook-9", "success", "Done", {})
    assert store.end(end)
    assert not deliver(store, f"{__name__}:refusing_callback", end, tries=1)
    logged = "\n".join(
        r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in caplog.records
    )
    assert "hook-9" in logged and "ValueError" in logged
    assert "ann.secret" not in logged
