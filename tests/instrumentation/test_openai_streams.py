"""OpenAI streams end their span exactly once on every path, over a local recording transport:
consumed, closed early, context-managed, abandoned (GC), failed mid-way, cancelled; and the raw /
streaming-response variants count one call, never two."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import openai
import pytest
from opentelemetry.trace import StatusCode

import budgetspan
from budgetspan import attributes as A
from tests.conftest import cancelled_once
from tests.replay import CHAT_ARGS as ARGS
from tests.replay import CHAT_USAGE as USAGE
from tests.replay import (
    Recorder,
    broken_sse,
    chat_chunks,
    chat_completion,
    hanging_sse,
    json_response,
    openai_sse,
    sse_response,
    streamed_json,
)
from tests.replay import openai_client as client


def aclient(rec: Recorder) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="test", http_client=rec.asynchronous(), max_retries=0)


def test_consumed_stream_has_usage_and_time_to_first_token(instrumented: Any) -> None:
    rec = Recorder(sse_response(openai_sse(chat_chunks(usage=USAGE))))
    with budgetspan.run("s") as run:
        pieces = [
            c.choices[0].delta.content
            for c in client(rec).chat.completions.create(stream=True, **ARGS)
            if c.choices
        ]
    assert "".join(p for p in pieces if p) == "Hello"
    span = instrumented.only("chat")
    assert span.attributes[A.STREAM_END] == "consumed"
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 2
    assert span.attributes[A.TIME_TO_FIRST_TOKEN_S] >= 0
    assert span.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert span.status.status_code is not StatusCode.ERROR
    assert run.partial["last_model_answer"] == "Hello"
    assert run.usage.output_tokens == 2


def test_closed_early_ends_once_as_unreported(instrumented: Any) -> None:
    rec = Recorder(sse_response(openai_sse(chat_chunks(usage=USAGE))))
    with budgetspan.run("s") as run:
        stream = client(rec).chat.completions.create(stream=True, **ARGS)
        next(stream)
        stream.close()
        stream.close()  # a second close changes nothing
    span = instrumented.only("chat")
    assert span.attributes[A.STREAM_END] == "closed"
    assert span.attributes[A.USAGE_UNREPORTED] is True  # the usage chunk never arrived
    assert A.GEN_AI_USAGE_OUTPUT_TOKENS not in span.attributes
    assert run.usage.model_calls == 1


def test_context_manager_exit_ends_the_stream(instrumented: Any) -> None:
    rec = Recorder(sse_response(openai_sse(chat_chunks(usage=USAGE))))
    with client(rec).chat.completions.create(stream=True, **ARGS) as stream:
        next(stream)
        assert instrumented.spans("chat") == []  # still open while the stream is
    assert instrumented.only("chat").attributes[A.STREAM_END] == "closed"


def test_abandoned_stream_is_ended_by_garbage_collection(instrumented: Any) -> None:
    rec = Recorder(sse_response(openai_sse(chat_chunks(usage=USAGE))))

    def leak() -> None:
        stream = client(rec).chat.completions.create(stream=True, **ARGS)
        next(stream)

    leak()
    gc.collect()
    assert instrumented.only("chat").attributes[A.STREAM_END] == "abandoned"


def test_failed_mid_stream_is_error_and_the_sdk_exception_propagates(instrumented: Any) -> None:
    head = openai_sse(chat_chunks(usage=None)[:1], done=False)
    rec = Recorder(broken_sse(head))
    stream = client(rec).chat.completions.create(stream=True, **ARGS)
    with pytest.raises(openai.APIConnectionError):
        for _ in stream:
            pass
    span = instrumented.only("chat")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.STREAM_END] == "error"
    assert span.attributes[A.ERROR_TYPE] == "APIConnectionError"


async def test_cancelled_mid_stream(instrumented: Any) -> None:
    head = openai_sse(chat_chunks(usage=None)[:1], done=False)
    rec = Recorder(hanging_sse(head))
    got_first = asyncio.Event()

    async def consume() -> None:
        stream = await aclient(rec).chat.completions.create(stream=True, **ARGS)
        async for _ in stream:
            got_first.set()

    await cancelled_once(got_first, consume(), timeout=5)
    span = instrumented.only("chat")
    assert span.attributes[A.STREAM_END] == "cancelled"
    assert span.status.status_code is StatusCode.ERROR


async def test_async_stream_consumed_and_closed(instrumented: Any) -> None:
    rec = Recorder(sse_response(openai_sse(chat_chunks(usage=USAGE))))
    c = aclient(rec)
    stream = await c.chat.completions.create(stream=True, **ARGS)
    async for _ in stream:
        pass
    stream2 = await c.chat.completions.create(stream=True, **ARGS)
    await stream2.__anext__()
    await stream2.close()
    first, second = instrumented.spans("chat")
    assert first.attributes[A.STREAM_END] == "consumed"
    assert first.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 2
    assert second.attributes[A.STREAM_END] == "closed"


def test_chat_stream_helper_counts_once(instrumented: Any) -> None:
    rec = Recorder(sse_response(openai_sse(chat_chunks(usage=USAGE))))
    c = client(rec)
    with c.chat.completions.stream(**ARGS) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello"
    with c.chat.completions.stream(**ARGS) as stream:
        for _ in stream:
            break  # leave early: the helper closes the HTTP response itself
    first, second = instrumented.spans("chat")
    assert first.attributes[A.STREAM_END] == "consumed"
    assert first.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert second.attributes[A.STREAM_END] == "closed"
    assert len(rec.requests) == 2


def test_with_raw_response_counts_once_with_usage(instrumented: Any) -> None:
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    with budgetspan.run("raw") as run:
        raw = client(rec).chat.completions.with_raw_response.create(**ARGS)
        completion = raw.parse()
    assert completion.choices[0].message.content == "hello"
    span = instrumented.only("chat")
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert run.usage.model_calls == 1 and run.usage.input_tokens == 11


def test_with_raw_response_stream(instrumented: Any) -> None:
    rec = Recorder(sse_response(openai_sse(chat_chunks(usage=USAGE))))
    raw = client(rec).chat.completions.with_raw_response.create(stream=True, **ARGS)
    assert instrumented.spans("chat") == []
    for _ in raw.parse():
        pass
    span = instrumented.only("chat")
    assert span.attributes[A.STREAM_END] == "consumed"
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 2


def test_with_streaming_response(instrumented: Any) -> None:
    rec = Recorder(streamed_json(chat_completion(usage=USAGE)))
    c = client(rec)
    with c.chat.completions.with_streaming_response.create(**ARGS) as response:
        assert response.parse().usage is not None
    with c.chat.completions.with_streaming_response.create(**ARGS) as response:
        pass  # never read: counted, usage unreported
    first, second = instrumented.spans("chat")
    assert first.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert second.attributes[A.USAGE_UNREPORTED] is True
    assert second.attributes[A.STREAM_END] == "closed"


def test_sdk_error_is_error_status_and_propagates_unchanged(instrumented: Any) -> None:
    body = {"error": {"message": "bad model", "type": "invalid_request_error", "code": None}}
    rec = Recorder(json_response(body, status=400))
    with budgetspan.run("err") as run, pytest.raises(openai.BadRequestError) as info:
        client(rec).chat.completions.create(**ARGS)
    assert "bad model" in str(info.value)
    span = instrumented.only("chat")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.ERROR_TYPE] == "BadRequestError"
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert run.usage.model_calls == 1


async def test_async_raw_and_streaming_response(instrumented: Any) -> None:
    rec = Recorder(
        json_response(chat_completion(usage=USAGE)),
        streamed_json(chat_completion(usage=USAGE)),
        sse_response(openai_sse(chat_chunks(usage=USAGE))),
    )
    c = aclient(rec)
    raw = await c.chat.completions.with_raw_response.create(**ARGS)
    assert raw.parse().usage is not None
    async with c.chat.completions.with_streaming_response.create(**ARGS) as response:
        assert (await response.parse()).usage is not None
    raw_stream = await c.chat.completions.with_raw_response.create(stream=True, **ARGS)
    async for _ in raw_stream.parse():
        pass
    spans = instrumented.spans("chat")
    assert len(spans) == 3
    assert [s.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] for s in spans] == [11, 11, 11]
    assert spans[2].attributes[A.STREAM_END] == "consumed"


def test_no_reference_cycles_left_behind(instrumented: Any) -> None:
    """Our hooks live on the SDK's objects; they must not keep them alive until a GC pass."""
    import weakref

    rec = Recorder(
        sse_response(openai_sse(chat_chunks(usage=USAGE))), streamed_json(chat_completion(usage=USAGE))
    )
    c = client(rec)
    gc.collect()
    gc.disable()
    try:
        stream = c.chat.completions.create(stream=True, **ARGS)
        stream_response = weakref.ref(stream.response)
        for _ in stream:
            pass
        del stream
        with c.chat.completions.with_streaming_response.create(**ARGS) as raw:
            raw.parse()
            raw_http, raw_ref = weakref.ref(raw.http_response), weakref.ref(raw)
        del raw
        assert stream_response() is None
        assert raw_http() is None and raw_ref() is None
    finally:
        gc.enable()
    assert len(instrumented.spans("chat")) == 2


# --- stream usage: asked for on the caller's behalf, its chunk hidden -----------------------------


def _honest_server() -> Any:
    """Answers like OpenAI: the usage chunk only when the request asked for it."""
    import json

    def answer(request: Any) -> Any:
        body = json.loads(request.content)
        wants = bool((body.get("stream_options") or {}).get("include_usage"))
        return sse_response(openai_sse(chat_chunks(usage=USAGE if wants else None)))(request)

    return answer


def _visible(chunks: Any) -> list[tuple[Any, Any, Any]]:
    return [(len(c.choices), c.choices[0].delta.content if c.choices else None, c.usage) for c in chunks]


def test_stream_usage_is_asked_for_and_its_chunk_hidden(
    instrumented: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    rec = Recorder(_honest_server())
    with budgetspan.run("s"):
        seen = _visible(client(rec).chat.completions.create(stream=True, **ARGS))
    assert json.loads(rec.requests[-1].content)["stream_options"] == {"include_usage": True}
    span = instrumented.only("chat")
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 2
    assert A.USAGE_UNREPORTED not in span.attributes
    # The caller sees exactly what an uninstrumented call shows: no usage-only chunk.
    instrumented.exporter.clear()
    monkeypatch.setenv(A.ENV_OPENAI_STREAM_USAGE, "never")
    rec2 = Recorder(_honest_server())
    with budgetspan.run("s"):
        plain = _visible(client(rec2).chat.completions.create(stream=True, **ARGS))
    assert "stream_options" not in json.loads(rec2.requests[-1].content)
    assert seen == plain and len(seen) == 3 and all(n == 1 for n, _, _ in seen)
    assert instrumented.only("chat").attributes[A.USAGE_UNREPORTED] is True


async def test_async_stream_usage_is_asked_for_and_hidden(instrumented: Any) -> None:
    rec = Recorder(_honest_server())
    async with budgetspan.run("s"):
        stream = await aclient(rec).chat.completions.create(stream=True, **ARGS)
        seen = [c async for c in stream]
    assert all(c.choices for c in seen) and len(seen) == 3
    assert instrumented.only("chat").attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 2


def test_the_callers_own_stream_options_stand(instrumented: Any) -> None:
    import json

    rec = Recorder(_honest_server())
    with budgetspan.run("s"):
        seen = _visible(
            client(rec).chat.completions.create(stream=True, stream_options={"include_usage": True}, **ARGS)
        )
    assert seen[-1][0] == 0 and seen[-1][2] is not None  # they asked: they get the usage chunk
    rec2 = Recorder(_honest_server())
    with budgetspan.run("s"):
        list(
            client(rec2).chat.completions.create(stream=True, stream_options={"include_usage": False}, **ARGS)
        )
    assert json.loads(rec2.requests[-1].content)["stream_options"] == {"include_usage": False}


def test_raw_streams_are_left_alone_and_every_other_server_is_asked(
    instrumented: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    rec = Recorder(_honest_server())
    raw = client(rec).chat.completions.with_raw_response.create(stream=True, **ARGS)
    list(raw.parse())
    assert "stream_options" not in json.loads(rec.requests[-1].content)  # the raw body is theirs
    local = openai.OpenAI(
        api_key="t", base_url="http://127.0.0.1:9/v1", http_client=rec.sync(), max_retries=0
    )
    with budgetspan.run("s", max_total_tokens=300) as run:
        list(local.chat.completions.create(stream=True, max_tokens=50, **ARGS))
    # vLLM, Ollama, LiteLLM, Azure...: asked too, and the usage they send is counted
    assert json.loads(rec.requests[-1].content)["stream_options"] == {"include_usage": True}
    assert run.usage.total_tokens == USAGE["total_tokens"]
    monkeypatch.setenv(A.ENV_OPENAI_STREAM_USAGE, "never")
    list(local.chat.completions.create(stream=True, **ARGS))
    assert "stream_options" not in json.loads(rec.requests[-1].content)


def test_a_server_that_rejects_stream_options_is_asked_once_and_remembered(instrumented: Any) -> None:
    import json

    def strict(request: Any) -> Any:
        if "stream_options" in json.loads(request.content):
            return json_response({"error": {"message": "unknown field stream_options"}}, status=400)(request)
        return sse_response(openai_sse(chat_chunks(pieces=("a" * 300,))))(request)

    rec = Recorder(strict)
    local = openai.OpenAI(
        api_key="t", base_url="http://127.0.0.1:8/v1", http_client=rec.sync(), max_retries=0
    )
    with budgetspan.run("s", max_model_calls=2) as run:
        first = list(local.chat.completions.create(stream=True, **ARGS))
        second = list(local.chat.completions.create(stream=True, **ARGS))
    sent = [json.loads(r.content) for r in rec.requests]
    # first call: rejected with the option, sent again without it (one call, two requests);
    # second call: not asked again
    assert ["stream_options" in body for body in sent] == [True, False, False]
    assert first and second and run.usage.model_calls == 2
    # no usage ever came: charged an estimate of the text received (100 tokens), never 0
    assert run.usage.output_tokens >= 2 * 100 and run.usage.unreported_usage_calls == 2
    spans = instrumented.spans("chat")
    assert all(s.attributes[A.USAGE_UNREPORTED] for s in spans)
    assert [s.attributes.get(A.USAGE_ESTIMATED_OUTPUT) for s in spans] == [100, 100]


async def test_async_stream_deadline_is_armed_once_per_call_not_per_chunk(
    instrumented: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: a wall-clock limit costs one timer per streamed call. Counted on the real SDK
    path: ``watch_stream`` (the one timer) once per stream, the per-await ``deadline`` context
    never entered while chunks are read, and the event loop asked for one timer per stream."""
    from budgetspan.calls.call import Call

    counts = {"watch": 0, "deadline": 0, "call_at": 0}
    watch, deadline = Call.watch_stream, Call.deadline

    def counted_watch(self: Call) -> None:
        counts["watch"] += 1
        watch(self)

    def counted_deadline(self: Call, *a: Any, **kw: Any) -> Any:
        counts["deadline"] += 1
        return deadline(self, *a, **kw)

    monkeypatch.setattr(Call, "watch_stream", counted_watch)
    pieces = tuple(f"t{i}" for i in range(50))
    rec = Recorder(sse_response(openai_sse(chat_chunks(pieces=pieces, usage=USAGE))))
    loop = asyncio.get_running_loop()
    call_at = loop.call_at

    def counted_call_at(*a: Any, **kw: Any) -> Any:
        counts["call_at"] += 1
        return call_at(*a, **kw)

    async with budgetspan.run("s", max_wall_clock_s=60):
        for _ in range(2):
            stream = await aclient(rec).chat.completions.create(stream=True, **ARGS)
            monkeypatch.setattr(Call, "deadline", counted_deadline)
            monkeypatch.setattr(loop, "call_at", counted_call_at)
            got = [c async for c in stream]
            monkeypatch.setattr(Call, "deadline", deadline)
            monkeypatch.setattr(loop, "call_at", call_at)
            assert len(got) == len(pieces) + 1
    assert counts == {"watch": 2, "deadline": 0, "call_at": 2}
    spans = instrumented.spans("chat")
    assert len(spans) == 2 and all(s.attributes[A.STREAM_END] == "consumed" for s in spans)
