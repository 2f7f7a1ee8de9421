"""Runs around instrumented SDK calls: observe mode lets calls through but marks them, parallel
calls never overshoot a count limit, sampled-out spans are still accounted, phases tag calls, and
the Responses API and Anthropic content switch behave like chat completions."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import budgetspan
from budgetspan import attributes as A
from budgetspan import config as bs_config
from tests.conftest import bs_context
from tests.replay import CHAT_ARGS as ARGS
from tests.replay import CHAT_USAGE as USAGE
from tests.replay import (  # noqa: F401
    Recorder,
    anthropic_message,
    chat_completion,
    json_response,
    openai_sse,
    sse_response,
)
from tests.replay import openai_client as client


def test_observe_mode_lets_the_call_through_and_marks_it(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    c = client(rec)
    with budgetspan.run("r", mode="observe", max_model_calls=1) as run:
        c.chat.completions.create(**ARGS)
        c.chat.completions.create(**ARGS)
    assert len(rec.requests) == 2
    first, second = instrumented.spans("chat")
    assert A.WOULD_REFUSE not in first.attributes
    assert second.attributes[A.WOULD_REFUSE] == "max_model_calls"
    assert run.would_exhaust == ["max_model_calls"]
    assert run.outcome is budgetspan.Outcome.SUCCESS


def test_parallel_threads_never_overshoot(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    c = client(rec)
    refused = 0
    with budgetspan.run("r", max_model_calls=5) as run:
        import contextvars

        def one() -> bool:
            try:
                c.chat.completions.create(**ARGS)
                return True
            except budgetspan.BudgetExhausted:
                return False

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(contextvars.copy_context().run, one) for _ in range(20)]
            results = [f.result() for f in futures]
        refused = results.count(False)
    assert results.count(True) == 5 and refused == 15
    assert len(rec.requests) == 5
    assert run.usage.model_calls == 5


async def test_parallel_tasks_never_overshoot(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    c = openai.AsyncOpenAI(api_key="t", http_client=rec.asynchronous(), max_retries=0)
    async with budgetspan.run("r", max_model_calls=3, suppress_exhausted=True):
        results = await asyncio.gather(
            *(c.chat.completions.create(**ARGS) for _ in range(10)), return_exceptions=True
        )
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, budgetspan.BudgetExhausted) for r in results if isinstance(r, BaseException))
    assert len(rec.requests) == 3


def test_sampled_out_calls_are_still_accounted(monkeypatch: pytest.MonkeyPatch) -> None:
    from budgetspan.accounting.memory import InMemoryLedger
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    for key in [k for k in __import__("os").environ if k.startswith("BUDGETSPAN_")]:
        monkeypatch.delenv(key)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bs_context.set_ledger(InMemoryLedger())
    bs_context.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument()
    try:
        rec = Recorder(json_response(chat_completion(usage=USAGE)))
        with budgetspan.run("r", max_model_calls=2) as run, pytest.raises(budgetspan.BudgetExhausted):
            for _ in range(3):
                client(rec).chat.completions.create(**ARGS)
        assert exporter.get_finished_spans() == ()
        assert run.usage.model_calls == 2 and run.usage.input_tokens == 22
        assert run.usage.cost_usd > 0
        assert len(rec.requests) == 2
    finally:
        OpenAIInstrumentor().uninstrument()
        bs_context.set_tracer_provider(None)


def test_phase_tags_the_call(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    with budgetspan.run("r"), budgetspan.phase("verification"):
        client(rec).chat.completions.create(**ARGS)
    span = instrumented.spans("chat")[0]
    assert span.attributes[A.PHASE] == "verification"
    (phase,) = instrumented.spans("phase")
    assert span.parent.span_id == phase.context.span_id


def _response(text: str = "ok", usage: Any = None) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-4.1-nano-2025-04-14",
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            },
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage
        or {
            "input_tokens": 18,
            "output_tokens": 79,
            "total_tokens": 97,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 3},
        },
    }


def test_responses_create_non_streaming(instrumented: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(A.ENV_CAPTURE_CONTENT, "true")
    bs_config.refresh_capture_content()  # read at instrument time
    rec = Recorder(json_response(_response("the answer")))
    with budgetspan.run("r") as run:
        out = client(rec).responses.create(
            model="gpt-4.1-nano", input="question?", instructions="be brief", max_output_tokens=200
        )
    assert out.output_text == "the answer"
    (span,) = instrumented.spans("chat")
    assert span.name == "chat gpt-4.1-nano"
    assert span.attributes[A.GEN_AI_REQUEST_MAX_TOKENS] == 200
    assert span.attributes[A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 3
    assert span.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("completed",)
    assert json.loads(span.attributes[A.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "question?"},
    ]
    assert run.partial["last_model_answer"] == "the answer"


def test_responses_stream_without_completed_event_is_unreported(instrumented: Any) -> None:
    events = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**_response(), "status": "in_progress", "output": [], "usage": None},
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "par",
            "logprobs": [],
        },
    ]
    body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    rec = Recorder(sse_response(body))
    with budgetspan.run("r") as run:
        kinds = [e.type for e in client(rec).responses.create(model="gpt-4.1-nano", input="q", stream=True)]
    assert kinds == ["response.created", "response.output_text.delta"]
    (span,) = instrumented.spans("chat")
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert span.attributes[A.GEN_AI_RESPONSE_ID] == "resp_1"
    assert run.usage.unreported_usage_calls == 1
    assert run.partial["last_model_answer"] == "par"


def test_anthropic_content_only_when_asked(instrumented: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(json_response(anthropic_message(text="private reply")))
    c = anthropic.Anthropic(api_key="t", http_client=rec.sync(), max_retries=0)
    args: dict[str, Any] = {
        "model": "claude-3-haiku-20240307",
        "max_tokens": 10,
        "system": "sys prompt",
        "messages": [{"role": "user", "content": "private question"}],
    }
    c.messages.create(**args)
    monkeypatch.setenv(A.ENV_CAPTURE_CONTENT, "true")
    bs_config.refresh_capture_content()  # read at instrument time
    c.messages.create(**args)
    off, on = instrumented.spans("chat")
    assert "private" not in json.dumps(dict(off.attributes), default=str)
    assert json.loads(on.attributes[A.GEN_AI_INPUT_MESSAGES])[0] == {
        "role": "system",
        "content": "sys prompt",
    }
    assert json.loads(on.attributes[A.GEN_AI_OUTPUT_MESSAGES])[0]["parts"][0]["content"] == "private reply"


async def test_budgetspan_cancel_stops_an_in_flight_async_call(instrumented: Any) -> None:
    import httpx2

    started = asyncio.Event()

    async def slow(request: httpx2.Request) -> httpx2.Response:
        started.set()
        await asyncio.sleep(30)
        return httpx2.Response(200, json=chat_completion(usage=USAGE))

    c = openai.AsyncOpenAI(
        api_key="t", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(slow)), max_retries=0
    )

    async def agent() -> None:
        async with budgetspan.run("r") as run:
            holder.append(run)
            await c.chat.completions.create(**ARGS)

    holder: list[Any] = []
    task = asyncio.create_task(agent())
    await asyncio.wait_for(started.wait(), 5)
    assert budgetspan.cancel(holder[0].id)
    with pytest.raises(budgetspan.RunCancelled):
        await asyncio.wait_for(task, 5)
    assert holder[0].outcome is budgetspan.Outcome.CANCELLED
    (span,) = instrumented.spans("chat")
    assert span.status.status_code.name == "ERROR"
