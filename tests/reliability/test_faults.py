"""Faults: the trace backend failing, budgetspan itself failing, and calls cancelled mid-way.

- OTLP endpoint down (closed port), slow (answers after the exporter's timeout) or answering 500,
  behind the SDK's BatchSpanProcessor + OTLPSpanExporter (http): every application call
  succeeds, and every lost span is counted by the SDK's own processor/exporter metrics
  (``otel.sdk.processor.span.processed`` / ``otel.sdk.exporter.span.exported`` with
  ``error.type``). Added latency is measured in bench/bench_exporter_outage.py, not here.
- An exception forced inside budgetspan (pricing, usage parser, observer, listener, span
  machinery, call setup) never reaches the application and never leaves a span open.
- Cancellation or an SDK error mid-call ends the span once, with status ERROR and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import budgetspan
from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.pricing import PriceResolver
from budgetspan.calls import call as bs_calls
from budgetspan.instrumentation import openai as bs_openai
from budgetspan.runs import context as bs_context
from budgetspan.runs.run import Outcome
from tests.conftest import cancelled_once
from tests.reliability._support import (
    ANSWER_MARK,
    MODEL,
    OtlpEndpoint,
    async_client,
    chat_body,
    chat_chunks,
    closed_port,
    messages,
    openai_instrumented,
    sse,
    sync_client,
)
from tests.reliability.conftest import Lean, scaled
from tests.replay import BrokenStream, HangingStream

OUTAGE_RUNS = scaled(200, minimum=50)


class SpanCounter(SpanProcessor):
    """Counts spans started and ended (a span left open is a leak)."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        self.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


def _sdk_counts(reader: InMemoryMetricReader, name: str) -> tuple[int, int]:
    """(points without error.type, points with error.type) of one SDK self-metric."""
    ok = failed = 0
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    value = int(getattr(point, "value", 0))
                    if "error.type" in (point.attributes or {}):
                        failed += value
                    else:
                        ok += value
    return ok, failed


@pytest.fixture
def openai_on() -> Iterator[None]:
    with openai_instrumented():
        yield


@pytest.mark.parametrize("fault", ["down", "slow", "error_500"])
def test_otlp_endpoint_fault_never_reaches_the_application_and_drops_are_counted(
    lean: Lean, monkeypatch: pytest.MonkeyPatch, openai_on: None, fault: str
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    with contextlib.ExitStack() as stack:
        if fault == "down":
            url = f"http://127.0.0.1:{closed_port()}/v1/traces"
            endpoint = None
        else:
            endpoint = stack.enter_context(OtlpEndpoint("slow" if fault == "slow" else "error"))
            url = endpoint.url
        exporter = OTLPSpanExporter(endpoint=url, timeout=0.3, meter_provider=meters)
        batch = BatchSpanProcessor(
            exporter,
            max_queue_size=64,
            schedule_delay_millis=20,
            max_export_batch_size=32,
            meter_provider=meters,
        )
        counter = SpanCounter()
        lean.provider.add_span_processor(counter)
        lean.provider.add_span_processor(batch)
        client = sync_client()

        @budgetspan.tool
        def lookup(i: int) -> int:
            return i

        for i in range(OUTAGE_RUNS):
            with budgetspan.run("faults", max_model_calls=2, max_tool_calls=2) as run:
                answer = client.chat.completions.create(model=MODEL, messages=messages())
                assert answer.choices[0].message.content == ANSWER_MARK
                assert lookup(i) == i
            assert run.outcome is Outcome.SUCCESS and run.usage.input_tokens == 120
        batch.shutdown()
        if endpoint is not None:
            assert endpoint.requests > 0  # the exporter did reach it

    assert counter.started == counter.ended == 3 * OUTAGE_RUNS
    queued, queue_full = _sdk_counts(reader, "otel.sdk.processor.span.processed")
    exported, export_failed = _sdk_counts(reader, "otel.sdk.exporter.span.exported")
    print(
        f"\n[faults] {fault}: {counter.ended} spans; dropped at the queue {queue_full}, "
        f"failed exports {export_failed}, 'exported' {exported}"
    )
    assert exported + export_failed == queued  # every span handed to the exporter is accounted
    assert queue_full + queued >= counter.ended  # no span vanished without a count
    if fault != "error_500":
        assert exported == 0 and export_failed == queued


@pytest.mark.xfail(
    strict=True,
    reason="opentelemetry-exporter-otlp 1.45 counts spans rejected with HTTP 500 as exported "
    "(error.type unset: the transport raised nothing); budgetspan's own budgetspan_spans_dropped_total "
    "counts them (tests/reliability/test_spans_dropped.py)",
)
def test_spans_rejected_with_http_500_are_counted_as_failed(
    lean: Lean, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    with OtlpEndpoint("error") as endpoint:
        exporter = OTLPSpanExporter(endpoint=endpoint.url, timeout=0.3, meter_provider=meters)
        batch = BatchSpanProcessor(exporter, meter_provider=meters)
        lean.provider.add_span_processor(batch)

        @budgetspan.tool
        def lookup() -> None:
            pass

        with budgetspan.run("faults"):
            lookup()
        batch.shutdown()
        assert endpoint.requests == 1
    exported, export_failed = _sdk_counts(reader, "otel.sdk.exporter.span.exported")
    assert (exported, export_failed) == (0, 2)


# --- failures inside budgetspan ----------------------------------------------------------------


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("forced failure inside budgetspan")


class _RaisingListener:
    def on_run_start(self, run: Any) -> None:
        _boom()

    def on_run_end(self, run: Any) -> None:
        _boom()

    def on_call_start(self, *args: Any) -> None:
        _boom()

    def on_call_end(self, record: Any) -> None:
        _boom()

    def on_exhausted(self, *args: Any) -> None:
        _boom()


class _BrokenTracer:
    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        _boom()


INJECTIONS = {
    "pricing": lambda mp: mp.setattr(PriceResolver, "cost", _boom),
    "usage_parser": lambda mp: mp.setattr(bs_openai, "openai_usage", _boom),
    "observer": lambda mp: mp.setattr(bs_openai.ChatObserver, "on_response", _boom),
    "call_setup": lambda mp: mp.setattr(bs_openai, "_new_call", _boom),
    "span_end": lambda mp: mp.setattr(bs_calls.Call, "_end", _boom),
    "tracer": lambda mp: mp.setattr(bs_context, "get_tracer", lambda: _BrokenTracer()),
    "listener": lambda mp: events.add_listener(_RaisingListener()),
    "usage_commit": lambda mp: mp.setattr(bs_calls.Call, "set_usage", _boom),
}


@pytest.mark.parametrize("where", sorted(INJECTIONS))
def test_exception_inside_budgetspan_never_reaches_the_application(
    lean: Lean, monkeypatch: pytest.MonkeyPatch, openai_on: None, where: str
) -> None:
    counter = SpanCounter()
    lean.provider.add_span_processor(counter)
    client = sync_client()
    aclient = async_client()

    @budgetspan.tool
    def lookup(i: int) -> int:
        return i * 2

    INJECTIONS[where](monkeypatch)
    answers: list[str | None] = []
    with budgetspan.run("faults", max_model_calls=5, max_tool_calls=5) as run:
        answers.append(
            client.chat.completions.create(model=MODEL, messages=messages()).choices[0].message.content
        )
        stream = client.chat.completions.create(model=MODEL, messages=messages(), stream=True)
        answers.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

        async def async_call() -> str | None:
            r = await aclient.chat.completions.create(model=MODEL, messages=messages())
            return r.choices[0].message.content

        answers.append(asyncio.run(async_call()))
        assert lookup(21) == 42
    assert answers == [ANSWER_MARK] * 3
    assert run.outcome is Outcome.SUCCESS
    assert counter.started == counter.ended  # nothing left open
    assert budgetspan.live_runs() == []


def test_internal_errors_are_reported_to_listeners(
    lean: Lean, monkeypatch: pytest.MonkeyPatch, openai_on: None
) -> None:
    seen: list[str] = []

    class Errors:
        def on_internal_error(self, where: str) -> None:
            seen.append(where)

    events.add_listener(Errors())
    monkeypatch.setattr(bs_openai.ChatObserver, "on_response", _boom)
    with budgetspan.run("faults") as run:
        r = sync_client().chat.completions.create(model=MODEL, messages=messages())
    assert r.choices[0].message.content == ANSWER_MARK  # the program got its answer
    assert run.outcome is Outcome.SUCCESS
    # counted once, with a place (the metrics module turns this into budgetspan_internal_errors)
    assert len(seen) == 1 and seen[0]


# --- cancellation and SDK errors mid-call --------------------------------------------------------


@pytest.fixture
def spans(lean: Lean) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    lean.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _one(exporter: InMemorySpanExporter, prefix: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


async def test_cancelled_tool_call_ends_its_span_as_cancelled(spans: InMemorySpanExporter) -> None:
    started = asyncio.Event()

    @budgetspan.tool
    async def slow_search(q: str) -> str:
        started.set()
        await asyncio.sleep(30)
        return q

    runs: list[budgetspan.Run] = []

    async def agent() -> None:
        async with budgetspan.run("cancel") as run:
            runs.append(run)
            await slow_search("x")

    await cancelled_once(started, agent())
    span = _one(spans, "execute_tool slow_search")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.ERROR_TYPE] == "CancelledError"
    assert runs[0].outcome is Outcome.CANCELLED
    assert budgetspan.live_runs() == []


async def test_cancelled_model_call_ends_its_span_as_cancelled(
    spans: InMemorySpanExporter, openai_on: None
) -> None:
    in_flight = asyncio.Event()
    client = async_client(delay_s=30, arrived=in_flight)

    async def agent() -> None:
        async with budgetspan.run("cancel"):
            await client.chat.completions.create(model=MODEL, messages=messages())

    await cancelled_once(in_flight, agent(), timeout=10)  # the request reached the server
    span = _one(spans, "chat ")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.ERROR_TYPE] == "CancelledError"
    assert span.attributes.get(A.USAGE_UNREPORTED) is True  # no tokens guessed


async def test_cancelled_stream_ends_its_span_as_cancelled(
    spans: InMemorySpanExporter, openai_on: None
) -> None:
    head = chat_chunks().split(b"\n\n")[0] + b"\n\n"
    client = async_client(lambda request: sse(HangingStream(head)))
    got_first = asyncio.Event()

    async def agent() -> None:
        async with budgetspan.run("cancel"):
            stream = await client.chat.completions.create(model=MODEL, messages=messages(), stream=True)
            async for _chunk in stream:
                got_first.set()

    await cancelled_once(got_first, agent())
    span = _one(spans, "chat ")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.STREAM_END] == "cancelled"


async def test_budgetspan_cancel_mid_call_raises_run_cancelled(
    spans: InMemorySpanExporter, openai_on: None
) -> None:
    in_flight = asyncio.Event()
    client = async_client(delay_s=30, arrived=in_flight)
    runs: list[budgetspan.Run] = []

    async def agent() -> None:
        async with budgetspan.run("cancel") as run:
            runs.append(run)
            await client.chat.completions.create(model=MODEL, messages=messages())

    task = asyncio.create_task(agent())
    await asyncio.wait_for(in_flight.wait(), 10)  # mid-call: the request reached the server
    assert budgetspan.cancel(runs[0].id)
    with pytest.raises(budgetspan.RunCancelled):
        await task
    assert runs[0].outcome is Outcome.CANCELLED
    span = _one(spans, "chat ")
    assert span.status.status_code is StatusCode.ERROR


def test_sdk_error_mid_stream_ends_the_span_with_error(spans: InMemorySpanExporter, openai_on: None) -> None:
    head = chat_chunks().split(b"\n\n")[0] + b"\n\n"
    client = sync_client(lambda request: sse(BrokenStream(head)))
    with budgetspan.run("errors") as run:
        stream = client.chat.completions.create(model=MODEL, messages=messages(), stream=True)
        with pytest.raises((httpx2.ReadError, openai.APIError)):
            for _chunk in stream:
                pass
    assert run.outcome is Outcome.SUCCESS  # the app caught the SDK's error; our span says it
    span = _one(spans, "chat ")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.STREAM_END] == "error"


def test_sdk_http_error_ends_the_span_with_error(spans: InMemorySpanExporter, openai_on: None) -> None:
    client = sync_client(lambda request: httpx2.Response(500, json={"error": {"message": "boom"}}))
    with budgetspan.run("errors"), pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=messages())
    span = _one(spans, "chat ")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.ERROR_TYPE] == "InternalServerError"


def test_chat_body_helper_is_realistic() -> None:
    """The canned completion parses as the SDK's own type (guards the other tests' premise)."""
    parsed = openai.types.chat.ChatCompletion.model_validate(chat_body())
    assert parsed.usage is not None and parsed.usage.prompt_tokens == 120
