"""Enforcement and accounting around real OpenAI SDK calls over a recording local transport:
a refused call sends no request, the SDK's retries are counted against ``max_retries``, unknown
models are unpriced (never $0), malformed usage is unreported (never a crash), content is only
captured when asked, and the provider is told apart by ``base_url``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import openai
import pytest
from pydantic import BaseModel

import budgetspan
from budgetspan import attributes as A
from budgetspan import config as bs_config
from budgetspan.instrumentation.openai import provider_from_url
from tests.replay import CHAT_ARGS as ARGS
from tests.replay import CHAT_USAGE as USAGE
from tests.replay import (
    Recorder,
    chat_chunks,
    chat_completion,
    json_response,
    openai_sse,
    sse_response,
)
from tests.replay import openai_client as client


def test_refused_call_sends_no_request(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(text="first answer", usage=USAGE)))
    c = client(rec)
    with budgetspan.run("r", max_model_calls=1), pytest.raises(budgetspan.BudgetExhausted) as info:
        c.chat.completions.create(**ARGS)
        c.chat.completions.create(**ARGS)
    assert len(rec.requests) == 1
    assert info.value.reason == "max_model_calls"
    assert info.value.partial["last_model_answer"] == "first answer"
    assert len(instrumented.spans("chat")) == 1  # the refused call made no span


def test_refused_stream_and_async_send_nothing(instrumented: Any) -> None:
    rec = Recorder(sse_response(openai_sse(chat_chunks(usage=USAGE))))
    with budgetspan.run("r", max_model_calls=0), pytest.raises(budgetspan.BudgetExhausted):
        client(rec).chat.completions.create(stream=True, **ARGS)

    async def main() -> None:
        c = openai.AsyncOpenAI(api_key="t", http_client=rec.asynchronous(), max_retries=0)
        async with budgetspan.run("r", max_model_calls=0):
            await c.chat.completions.create(**ARGS)

    with pytest.raises(budgetspan.BudgetExhausted):
        asyncio.run(main())
    assert rec.requests == []


def test_worst_case_cost_refuses_before_sending(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    with budgetspan.run("r", max_cost_usd=0.001), pytest.raises(budgetspan.BudgetExhausted) as info:
        # 100k output tokens of gpt-4o-mini could cost $0.06: over the whole budget.
        client(rec).chat.completions.create(max_completion_tokens=100_000, **ARGS)
    assert info.value.reason == "max_cost_usd"
    assert rec.requests == []


def _flaky(*statuses: int) -> list[Any]:
    err = {"error": {"message": "busy", "type": "server_error", "code": None}}
    fails = [json_response(err, status=s, headers={"retry-after-ms": "1"}) for s in statuses]
    return [*fails, json_response(chat_completion(usage=USAGE))]


def test_sdk_retries_are_counted_as_attempts(instrumented: Any) -> None:
    rec = Recorder(*_flaky(429, 500))
    with budgetspan.run("r") as run:
        client(rec, max_retries=3).chat.completions.create(**ARGS)
    assert len(rec.requests) == 3
    span = instrumented.spans("chat")[0]
    assert span.attributes[A.RETRIES] == 2
    assert span.attributes[A.ATTEMPTS] == 3
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert run.usage.retries == 2 and run.usage.model_calls == 1


def test_max_retries_stops_the_sdk_retry_loop(instrumented: Any) -> None:
    rec = Recorder(*_flaky(429, 429, 429))
    with budgetspan.run("r", max_retries=1), pytest.raises(budgetspan.BudgetExhausted) as info:
        client(rec, max_retries=5).chat.completions.create(**ARGS)
    assert info.value.reason == "max_retries"
    assert len(rec.requests) == 2  # first attempt + the one allowed retry
    assert instrumented.spans("chat")[0].attributes[A.RETRIES] == 2  # the refused one is counted


async def test_async_retries_counted(instrumented: Any) -> None:
    rec = Recorder(*_flaky(503))
    c = openai.AsyncOpenAI(api_key="t", http_client=rec.asynchronous(), max_retries=2)
    await c.chat.completions.create(**ARGS)
    assert instrumented.spans("chat")[0].attributes[A.ATTEMPTS] == 2


def test_unknown_model_is_unpriced_not_free(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(model="acme-llm-7", usage=USAGE)))
    with budgetspan.run("r") as run:
        client(rec).chat.completions.create(model="acme-llm-7", messages=ARGS["messages"])
    span = instrumented.spans("chat")[0]
    assert span.name == "chat acme-llm-7"
    assert A.GEN_AI_USAGE_COST not in span.attributes
    assert span.attributes[A.COST_UNPRICED] is True
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert run.usage.unpriced_calls == 1 and run.usage.cost_usd == 0


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {"prompt_tokens": "11", "completion_tokens": "2"},
        {"prompt_tokens": -5, "completion_tokens": -1},
        {"prompt_tokens": True, "completion_tokens": None},
        {"prompt_tokens": [], "completion_tokens": {}},
    ],
)
def test_missing_or_malformed_usage_is_unreported(instrumented: Any, usage: Any) -> None:
    rec = Recorder(json_response(chat_completion(usage=usage)))
    with budgetspan.run("r") as run:
        result = client(rec).chat.completions.create(**ARGS)
    assert result.choices[0].message.content == "hello"
    span = instrumented.spans("chat")[0]
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in span.attributes
    assert A.GEN_AI_USAGE_COST not in span.attributes
    assert run.usage.unreported_usage_calls == 1 and run.usage.model_calls == 1


def test_content_only_when_asked(instrumented: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(json_response(chat_completion(text="secret answer", usage=USAGE)))
    c = client(rec)
    c.chat.completions.create(**ARGS)
    monkeypatch.setenv(A.ENV_CAPTURE_CONTENT, "true")
    bs_config.refresh_capture_content()  # read at instrument time
    c.chat.completions.create(**ARGS)
    off, on = instrumented.spans("chat")
    assert A.GEN_AI_INPUT_MESSAGES not in off.attributes
    assert A.GEN_AI_OUTPUT_MESSAGES not in off.attributes
    assert "secret answer" not in json.dumps(dict(off.attributes), default=str)
    assert json.loads(on.attributes[A.GEN_AI_INPUT_MESSAGES]) == ARGS["messages"]
    out = json.loads(on.attributes[A.GEN_AI_OUTPUT_MESSAGES])
    assert out[0]["parts"][0]["content"] == "secret answer"


@pytest.mark.parametrize(
    ("url", "provider"),
    [
        ("https://api.openai.com/v1", "openai"),
        ("https://myres.openai.azure.com/openai", "azure.ai.openai"),
        ("https://api.deepseek.com", "deepseek"),
        ("https://api.groq.com/openai/v1", "groq"),
        ("https://api.together.xyz/v1", "together_ai"),
        ("http://localhost:11434/v1", "ollama"),
        ("http://127.0.0.1:8000/v1", "vllm"),
        ("http://10.0.0.5:9000/v1", "openai_compatible"),
    ],
)
def test_provider_from_base_url(instrumented: Any, url: str, provider: str) -> None:
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    client(rec, base_url=url).chat.completions.create(**ARGS)
    span = instrumented.spans("chat")[0]
    assert span.attributes[A.GEN_AI_PROVIDER_NAME] == provider
    assert span.attributes[A.SERVER_ADDRESS] == httpx2.URL(url).host
    assert provider_from_url(url)[0] == provider


def test_azure_client_is_azure(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    c = openai.AzureOpenAI(
        api_key="t",
        api_version="2024-06-01",
        azure_endpoint="https://corp-gw.example.com",
        http_client=rec.sync(),
        max_retries=0,
    )
    c.chat.completions.create(**ARGS)
    assert instrumented.spans("chat")[0].attributes[A.GEN_AI_PROVIDER_NAME] == "azure.ai.openai"


class Answer(BaseModel):
    value: int


def test_parse_structured_output_counts_once(instrumented: Any) -> None:
    body = chat_completion(text='{"value": 42}', usage=USAGE)
    rec = Recorder(json_response(body))
    parsed = client(rec).chat.completions.parse(response_format=Answer, **ARGS)
    assert parsed.choices[0].message.parsed == Answer(value=42)
    (span,) = instrumented.spans("chat")
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 2


def test_embeddings_span(instrumented: Any) -> None:
    body = {
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    rec = Recorder(json_response(body))
    client(rec).embeddings.create(model="text-embedding-3-small", input="hi", encoding_format="float")
    (span,) = instrumented.spans("embeddings")
    assert span.name == "embeddings text-embedding-3-small"
    assert span.attributes[A.GEN_AI_OPERATION_NAME] == "embeddings"
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 8
    assert span.attributes[A.GEN_AI_USAGE_COST] > 0


async def test_async_call_is_bounded_by_the_run_wall_clock(instrumented: Any) -> None:
    server: list[str] = []

    async def slow(request: httpx2.Request) -> httpx2.Response:
        server.append("received")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            server.append("cancelled")
            raise
        return httpx2.Response(200, json=chat_completion(usage=USAGE))

    c = openai.AsyncOpenAI(
        api_key="t", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(slow)), max_retries=0
    )
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        async with budgetspan.run("r", max_wall_clock_s=0.3):
            await c.chat.completions.create(**ARGS)
    assert info.value.reason == "max_wall_clock_s"
    assert server == ["received", "cancelled"]  # sent, then cut at the deadline (not awaited)
    (span,) = instrumented.spans("chat")
    assert span.status.status_code.name == "ERROR"
    assert span.attributes[A.ERROR_TYPE] == "BudgetExhausted"


def test_uninstrument_restores_the_sdk(instrumented: Any) -> None:
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    OpenAIInstrumentor().uninstrument()
    try:
        client(rec).chat.completions.create(**ARGS)
        assert instrumented.spans("chat") == []
    finally:
        OpenAIInstrumentor().instrument()
    client(rec).chat.completions.create(**ARGS)
    assert len(instrumented.spans("chat")) == 1


@pytest.mark.internal_errors_expected
def test_a_bug_in_our_parsing_never_breaks_the_call(
    instrumented: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from budgetspan import events
    from budgetspan.instrumentation import openai as ours

    errors: list[str] = []

    class Listener:
        def on_internal_error(self, where: str) -> None:
            errors.append(where)

    def boom(*_: Any) -> Any:
        raise RuntimeError("parser bug")

    listener = Listener()
    events.add_listener(listener)
    try:
        monkeypatch.setattr(ours, "openai_usage", boom)
        rec = Recorder(json_response(chat_completion(usage=USAGE)))
        result = client(rec).chat.completions.create(**ARGS)
        assert result.choices[0].message.content == "hello"
        (span,) = instrumented.spans("chat")
        assert span.attributes[A.USAGE_UNREPORTED] is True  # we could not read it: not a fake 0
        assert errors

        monkeypatch.setattr(ours, "_new_call", boom)  # setting the call up fails: uninstrumented
        result = client(rec).chat.completions.create(**ARGS)
        assert result.choices[0].message.content == "hello"
        assert len(instrumented.spans("chat")) == 1
        assert "openai call setup" in errors
    finally:
        events.remove_listener(listener)


def test_instrument_with_a_tracer_provider_sends_spans_there(tracing: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    try:
        rec = Recorder(json_response(chat_completion(usage=USAGE)))
        client(rec).chat.completions.create(**ARGS)
    finally:
        OpenAIInstrumentor().uninstrument()
    assert [s.name for s in exporter.get_finished_spans()] == ["chat gpt-4o-mini"]
    assert tracing.spans("chat") == []


def test_legacy_text_completions(instrumented: Any) -> None:
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "llama-3-8b",
        "choices": [{"index": 0, "text": "four", "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    chunks = [
        {
            **body,
            "choices": [{"index": 0, "text": "fo", "finish_reason": None, "logprobs": None}],
            "usage": None,
        },
        {
            **body,
            "choices": [{"index": 0, "text": "ur", "finish_reason": "stop", "logprobs": None}],
            "usage": None,
        },
        {**body, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    ]
    rec = Recorder(json_response(body), sse_response(openai_sse(chunks)))
    c = client(rec, base_url="http://localhost:8000/v1")
    with budgetspan.run("r") as run:
        c.completions.create(model="llama-3-8b", prompt="2+2=", max_tokens=5)
        for _ in c.completions.create(model="llama-3-8b", prompt="2+2=", max_tokens=5, stream=True):
            pass
    whole, streamed = instrumented.spans("text_completion")
    assert whole.name == "text_completion llama-3-8b"
    assert whole.attributes[A.GEN_AI_OPERATION_NAME] == "text_completion"
    assert whole.attributes[A.GEN_AI_PROVIDER_NAME] == "vllm"
    assert whole.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 1
    assert whole.attributes[A.COST_UNPRICED] is True  # self-hosted: no borrowed price
    assert streamed.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 2
    assert streamed.attributes[A.STREAM_END] == "consumed"
    assert run.partial["last_model_answer"] == "four"
    assert run.usage.model_calls == 2
