"""Review 16: two requests of one upstream trace (one ``traceparent``), each declaring its run; a
thread of request a receives only the OpenTelemetry context (``BUDGETSPAN_THREADS=false``, or a
library that carries only that). Its calls spend from request a's run, found by the trace and
the request (its local root span), not from the run another request of the trace started last
(was: charged to request b). Real ``openai`` SDK over a recording transport; a real SDK tracer
provider with budgetspan's processor."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

import budgetspan
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.reliability._support import chat_body
from tests.replay import Recorder, json_response

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736


def _upstream(span_id: int) -> otel_context.Context:
    parent = SpanContext(TRACE, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


@pytest.fixture
def wire(lean: Any) -> Iterator[Recorder]:
    OpenAIInstrumentor().instrument()
    try:
        yield Recorder(json_response(chat_body()))
    finally:
        OpenAIInstrumentor().uninstrument()


def test_a_thread_with_only_the_otel_context_spends_from_its_own_requests_run(
    lean: Any, wire: Recorder
) -> None:
    tracer = lean.provider.get_tracer("web")
    c = openai.OpenAI(api_key="t", http_client=wire.sync(), max_retries=0)
    b_started, a_done = threading.Event(), threading.Event()
    runs: dict[str, Any] = {}

    def request_b() -> None:  # another request of the same trace, live meanwhile
        with tracer.start_as_current_span("GET /b", context=_upstream(0xB), kind=SpanKind.SERVER):
            with budgetspan.run("b", max_model_calls=2) as run:
                runs["b"] = run
                b_started.set()
                a_done.wait(10)

    results: list[str] = []

    def worker(ctx: Any) -> None:
        token = otel_context.attach(ctx)
        try:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            results.append("sent")
        except budgetspan.BudgetExhausted:
            results.append("refused")
        finally:
            otel_context.detach(token)

    with tracer.start_as_current_span("GET /a", context=_upstream(0xA), kind=SpanKind.SERVER):
        with budgetspan.run("a", max_model_calls=2, suppress_exhausted=True) as run_a:
            other = threading.Thread(target=request_b)
            other.start()
            assert b_started.wait(10)
            for _ in range(3):
                t = threading.Thread(target=worker, args=(otel_context.get_current(),))
                t.start()
                t.join()
            a_done.set()
    other.join()
    assert results == ["sent", "sent", "refused"] and len(wire.requests) == 2
    assert (run_a.usage.model_calls, runs["b"].usage.model_calls) == (2, 0)  # was (0, 2)


def test_spans_of_a_provider_without_budgetspan_share_their_requests_run(
    lean: Any, wire: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No run declared: a request's server span (budgetspan's processor on its provider) and a
    framework's span under it from a provider without that processor (so without the request's
    mark) are one request, one budget (not split into two runs, each with the whole budget)."""
    from opentelemetry.sdk.trace import TracerProvider

    from budgetspan import config as bs_config

    monkeypatch.setenv("BUDGETSPAN_BUDGET", "max_model_calls=2")
    bs_config.set_config(None)
    web, framework = lean.provider.get_tracer("web"), TracerProvider().get_tracer("framework")
    c = openai.OpenAI(api_key="t", http_client=wire.sync(), max_retries=0)
    results: list[str] = []

    def ask() -> None:
        try:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            results.append("sent")
        except budgetspan.BudgetExhausted:
            results.append("refused")

    with web.start_as_current_span("GET /a", context=_upstream(0xA), kind=SpanKind.SERVER):
        ask()
        with framework.start_as_current_span("graph step"):
            ask()
            ask()
    assert results == ["sent", "sent", "refused"] and len(wire.requests) == 2
