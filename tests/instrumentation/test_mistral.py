"""Mistral through the real ``mistralai`` SDK (2.x and later layout): every recorded exchange
replayed (vcrpy) with its usage matched exactly, sync and async; enforcement, streams and
unreported usage over a recording transport that counts the requests reaching the wire."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from mistralai.client import Mistral

import budgetspan
from budgetspan import attributes as A
from tests.replay import (
    Recorder,
    all_cassettes,
    broken_sse,
    expected_cost,
    json_response,
    openai_sse,
    replay,
    requests_of,
    sse_response,
)

CHAT = "mistralai/test_chat__test_mistralai_chat_legacy.yaml"
STREAM = "mistralai/test_chat__test_mistralai_streaming_chat_legacy.yaml"
EMBED = "mistralai/test_embeddings__test_mistral_embeddings_legacy.yaml"
# cassette -> (operation, input, output)
EXPECTED: dict[str, tuple[str, int, int]] = {
    CHAT: ("chat", 11, 96),
    STREAM: ("chat", 11, 80),
    EMBED: ("embeddings", 10, 0),
}
ARGS: dict[str, Any] = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


def calls(tracing: Any) -> list[Any]:
    """The model-call spans (not the run's)."""
    return [s for s in tracing.spans() if s.attributes.get(A.GEN_AI_OPERATION_NAME) != "invoke_agent"]


def arguments(name: str) -> dict[str, Any]:
    """The SDK arguments that send the cassette's recorded request body."""
    body = dict(requests_of(name)[0])
    body.pop("stream", None)
    if "input" in body:
        body["inputs"] = body.pop("input")
    return body


def check(span: Any, name: str) -> None:
    operation, inp, out = EXPECTED[name]
    attrs = dict(span.attributes)
    assert attrs[A.GEN_AI_OPERATION_NAME] == operation  # (OpenLLMetry leaves it out)
    assert attrs[A.GEN_AI_PROVIDER_NAME] == "mistral_ai"
    assert attrs[A.GEN_AI_REQUEST_MODEL] == arguments(name)["model"]
    assert attrs[A.GEN_AI_RESPONSE_MODEL] == arguments(name)["model"]
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == inp
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == out
    assert attrs[A.SERVER_ADDRESS] == "api.mistral.ai"
    assert A.USAGE_UNREPORTED not in attrs
    price = expected_cost("mistral", attrs[A.GEN_AI_RESPONSE_MODEL], inp, out)
    assert price is not None
    assert attrs[A.GEN_AI_USAGE_COST] == pytest.approx(price, rel=1e-9)


def test_every_mistral_cassette_is_covered() -> None:
    assert sorted(EXPECTED) == [c for c in all_cassettes() if c.startswith("mistralai/")]


def test_instrumentor_loads_with_mistralai_2_and_later(mistral: Any) -> None:
    """The 2.x+ layout (``mistralai.client``) is patched; the 1.x rows are skipped quietly."""
    from mistralai.client.chat import Chat
    from mistralai.client.embeddings import Embeddings

    for method in (Chat.complete, Chat.stream, Chat.complete_async, Chat.stream_async, Embeddings.create):
        assert hasattr(method, "__wrapped__")


def test_replay_sync(mistral: Any) -> None:
    client = Mistral(api_key="test")
    with budgetspan.run("replay") as run:
        with replay(CHAT):
            answer = client.chat.complete(**arguments(CHAT))
        with replay(STREAM):
            pieces = [e.data.choices[0].delta.content for e in client.chat.stream(**arguments(STREAM))]
        with replay(EMBED):
            vectors = client.embeddings.create(**arguments(EMBED))
    assert answer.choices[0].message.content and "".join(p for p in pieces if isinstance(p, str))
    assert vectors.data[0].embedding
    spans = calls(mistral)
    assert [s.name for s in spans] == ["chat mistral-tiny", "chat mistral-tiny", "embeddings mistral-embed"]
    for span, name in zip(spans, (CHAT, STREAM, EMBED), strict=True):
        check(span, name)
    assert spans[1].attributes[A.STREAM_END] == "consumed"
    assert spans[0].attributes[A.GEN_AI_RESPONSE_ID] == "e9459fcd56c742e0875167c9926c6aae"
    assert run.usage.model_calls == 3
    assert run.usage.input_tokens == 11 + 11 + 10
    assert run.usage.output_tokens == 96 + 80
    assert run.usage.cost_usd == pytest.approx(sum(s.attributes[A.GEN_AI_USAGE_COST] for s in spans))


async def test_replay_async(mistral: Any) -> None:
    client = Mistral(api_key="test")
    with replay(CHAT):
        await client.chat.complete_async(**arguments(CHAT))
    with replay(STREAM):
        stream = await client.chat.stream_async(**arguments(STREAM))
        async for _ in stream:
            pass
    with replay(EMBED):
        await client.embeddings.create_async(**arguments(EMBED))
    spans = calls(mistral)
    assert len(spans) == 3
    for span, name in zip(spans, (CHAT, STREAM, EMBED), strict=True):
        check(span, name)


# --- over the recording transport -------------------------------------------------------------


def local(rec: Recorder) -> Mistral:
    return Mistral(api_key="test", client=rec.sync(), async_client=rec.asynchronous())


def completion(usage: Any = USAGE, text: str = "hello") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "mistral-small-latest",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chunks(usage: Any = USAGE) -> bytes:
    base = {"id": "s1", "object": "chat.completion.chunk", "created": 1, "model": "mistral-small-latest"}
    out = [
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}
            ],
        },
        {**base, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ]
    if usage is not None:
        out[-1]["usage"] = usage
    return openai_sse(out)


def test_refused_call_sends_no_request(mistral: Any) -> None:
    rec = Recorder(json_response(completion(text="first answer")))
    client = local(rec)
    with budgetspan.run("r", max_model_calls=1), pytest.raises(budgetspan.BudgetExhausted) as info:
        client.chat.complete(**ARGS)
        client.chat.complete(**ARGS)
    assert len(rec.requests) == 1
    assert info.value.reason == "max_model_calls"
    assert info.value.partial["last_model_answer"] == "first answer"
    assert len(calls(mistral)) == 1


async def test_refused_stream_embeddings_and_async_send_nothing(mistral: Any) -> None:
    rec = Recorder(sse_response(chunks()))
    client = local(rec)
    async with budgetspan.run("r", max_model_calls=0):
        for send in (
            lambda: client.chat.stream(**ARGS),
            lambda: client.embeddings.create(model="mistral-embed", inputs=["a"]),
        ):
            with pytest.raises(budgetspan.BudgetExhausted):
                send()
        with pytest.raises(budgetspan.BudgetExhausted):
            await client.chat.complete_async(**ARGS)
        with pytest.raises(budgetspan.BudgetExhausted):
            await client.chat.stream_async(**ARGS)
    assert rec.requests == []


def test_worst_case_cost_refuses_before_sending(mistral: Any) -> None:
    rec = Recorder(json_response(completion()))
    # 30k output tokens of mistral-large ($6/M) may cost $0.18: over the whole budget
    with budgetspan.run("r", max_cost_usd=0.05), pytest.raises(budgetspan.BudgetExhausted) as info:
        local(rec).chat.complete(model="mistral-large-latest", messages=ARGS["messages"], max_tokens=30_000)
    assert info.value.reason == "max_cost_usd"
    assert rec.requests == []


def test_worst_case_tokens_reach_the_call(mistral: Any) -> None:
    rec = Recorder(json_response(completion()))
    with budgetspan.run("r", max_output_tokens=100), pytest.raises(budgetspan.BudgetExhausted) as info:
        local(rec).chat.complete(max_tokens=500, **ARGS)
    assert info.value.reason == "max_output_tokens"
    assert rec.requests == []


def test_stream_exact_usage_and_cached_tokens(mistral: Any) -> None:
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 4}}
    rec = Recorder(sse_response(chunks(usage)))
    with budgetspan.run("r") as run:
        text = "".join(e.data.choices[0].delta.content for e in local(rec).chat.stream(**ARGS))
    assert text == "Hello"
    (span,) = calls(mistral)
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 9  # prompt_tokens already has the cached
    assert span.attributes[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 4
    assert span.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert A.TIME_TO_FIRST_TOKEN_S in span.attributes
    assert run.usage.cache_read_tokens == 4 and run.usage.output_tokens == 2
    assert run.partial["last_model_answer"] == "Hello"


def test_stream_without_usage_is_unreported_and_charged(mistral: Any) -> None:
    rec = Recorder(sse_response(chunks(usage=None)))
    with budgetspan.run("r") as run:
        for _ in local(rec).chat.stream(**ARGS):
            pass
    (span,) = calls(mistral)
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert A.GEN_AI_USAGE_OUTPUT_TOKENS not in span.attributes
    assert span.attributes[A.USAGE_ESTIMATED_OUTPUT] == 2  # "Hello"
    assert run.usage.unreported_usage_calls == 1 and run.usage.input_tokens > 0 and run.usage.cost_usd > 0


def test_stream_closed_early_then_abandoned_each_end_once(mistral: Any) -> None:
    rec = Recorder(sse_response(chunks()))
    client = local(rec)
    stream = client.chat.stream(**ARGS)
    next(stream)
    stream.close()
    stream.close()
    abandoned = client.chat.stream(**ARGS)
    del abandoned
    gc.collect()
    closed, dropped = calls(mistral)
    assert closed.attributes[A.STREAM_END] == "closed"
    assert dropped.attributes[A.STREAM_END] == "abandoned"
    assert closed.attributes[A.USAGE_UNREPORTED] is True


def test_stream_broken_mid_way_ends_as_an_error(mistral: Any) -> None:
    import httpx2
    from opentelemetry.trace import StatusCode

    head = chunks().split(b"\n\n")[0] + b"\n\n"
    rec = Recorder(broken_sse(head))
    with pytest.raises(httpx2.ReadError):
        for _ in local(rec).chat.stream(**ARGS):
            pass
    (span,) = calls(mistral)
    assert span.attributes[A.STREAM_END] == "error"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.USAGE_UNREPORTED] is True


async def test_async_stream_closed_early(mistral: Any) -> None:
    rec = Recorder(sse_response(chunks()))
    stream = await local(rec).chat.stream_async(**ARGS)
    async for _ in stream:
        break
    await stream.close()
    (span,) = calls(mistral)
    assert span.attributes[A.STREAM_END] == "closed"


@pytest.mark.parametrize("usage", [{}, {"total_tokens": 11}, {"completion_tokens": -1}])
def test_missing_usage_is_unreported_not_zero(mistral: Any, usage: Any) -> None:
    """The SDK fills a missing count with 0; a count the server never sent is not a 0."""
    rec = Recorder(json_response(completion(usage=usage, text="x" * 30)))
    with budgetspan.run("r") as run:
        local(rec).chat.complete(**ARGS)
    (span,) = calls(mistral)
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in span.attributes
    assert run.usage.output_tokens == 10 and run.usage.unreported_usage_calls == 1


def test_embeddings_usage_recorded(mistral: Any) -> None:
    body = {
        "id": "e1",
        "object": "list",
        "model": "mistral-embed",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "usage": {"prompt_tokens": 5, "total_tokens": 5, "completion_tokens": 0},
    }
    rec = Recorder(json_response(body))
    with budgetspan.run("r") as run:
        local(rec).embeddings.create(model="mistral-embed", inputs=["hello", "world"])
    (span,) = calls(mistral)
    assert span.name == "embeddings mistral-embed"
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 5
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 0
    assert span.attributes[A.GEN_AI_USAGE_COST] == pytest.approx(
        expected_cost("mistral", "mistral-embed", 5, 0)
    )
    assert run.usage.input_tokens == 5
    assert json.loads(rec.requests[0].content)["input"] == ["hello", "world"]


def _flaky(*statuses: int) -> list[Any]:
    busy = {"message": "busy"}
    return [
        *(json_response(busy, status=s, headers={"retry-after-ms": "1"}) for s in statuses),
        json_response(completion()),
    ]


def retrying(rec: Recorder) -> Mistral:
    from mistralai.client.utils import BackoffStrategy, RetryConfig

    config = RetryConfig("backoff", BackoffStrategy(1, 1, 1.0, 10_000), False)
    return Mistral(api_key="t", client=rec.sync(), async_client=rec.asynchronous(), retry_config=config)


def test_sdk_retries_are_counted(mistral: Any) -> None:
    rec = Recorder(*_flaky(500, 429))
    with budgetspan.run("r") as run:
        retrying(rec).chat.complete(**ARGS)
    assert len(rec.requests) == 3
    (span,) = calls(mistral)
    assert span.attributes[A.RETRIES] == 2 and span.attributes[A.ATTEMPTS] == 3
    assert run.usage.retries == 2 and run.usage.model_calls == 1


async def test_max_retries_stops_the_sdk_retry_loop(mistral: Any) -> None:
    rec = Recorder(*_flaky(503, 503, 503))
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        async with budgetspan.run("r", max_retries=1):
            await retrying(rec).chat.complete_async(**ARGS)
    assert info.value.reason == "max_retries"
    assert len(rec.requests) == 2  # the first attempt and the one retry allowed


def test_uninstrument_restores_the_sdk(tracing: Any) -> None:
    from mistralai.client.chat import Chat
    from mistralai.client.utils import retries

    from budgetspan.instrumentation.mistral import MistralInstrumentor

    MistralInstrumentor().instrument()
    MistralInstrumentor().uninstrument()
    assert not hasattr(Chat.complete, "__wrapped__")
    assert not hasattr(retries._get_sleep_interval, "__wrapped__")
    rec = Recorder(json_response(completion()))
    with budgetspan.run("r", max_model_calls=0):
        local(rec).chat.complete(**ARGS)  # not ours any more: not refused
    assert len(rec.requests) == 1
