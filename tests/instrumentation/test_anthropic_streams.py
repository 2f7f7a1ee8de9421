"""Anthropic streams and calls over a recording local transport: every exit path ends the span
once, the cumulative ``message_delta`` replaces (never adds to) ``message_start``, refused calls
send nothing, retries count, errors propagate unchanged."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import anthropic
import httpx2
import pytest
from opentelemetry.trace import StatusCode

import budgetspan
from budgetspan import attributes as A
from tests.conftest import cancelled_once
from tests.replay import (
    Recorder,
    anthropic_events,
    anthropic_message,
    anthropic_sse,
    broken_sse,
    hanging_sse,
    json_response,
    sse_response,
)

ARGS: dict[str, Any] = {
    "model": "claude-3-haiku-20240307",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
}


def client(rec: Recorder, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("max_retries", 0)
    return anthropic.Anthropic(api_key="test", http_client=rec.sync(), **kw)


def aclient(rec: Recorder) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="test", http_client=rec.asynchronous(), max_retries=0)


def test_stream_usage_is_cumulative_and_cache_aware(instrumented: Any) -> None:
    events = anthropic_events(
        start_usage={
            "input_tokens": 5,
            "output_tokens": 1,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
        },
        delta_usage={"output_tokens": 40},
    )
    rec = Recorder(sse_response(anthropic_sse(events)))
    with budgetspan.run("s") as run, client(rec).messages.stream(**ARGS) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hi there"
    span = instrumented.only("chat")
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 125  # 5 + cache read + cache write
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 40  # not 41
    assert span.attributes[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 100
    assert span.attributes[A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == 20
    assert span.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("end_turn",)
    assert run.usage.output_tokens == 40 and run.usage.input_tokens == 125
    assert run.partial["last_model_answer"] == "Hi there"


def test_stream_closed_early_keeps_what_was_reported(instrumented: Any) -> None:
    rec = Recorder(sse_response(anthropic_sse(anthropic_events())))
    with client(rec).messages.stream(**ARGS) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break
    span = instrumented.only("chat")
    assert span.attributes[A.STREAM_END] == "closed"
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 12  # from message_start
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 1  # provisional: all we were told


def test_raw_stream_abandoned_is_ended_by_gc(instrumented: Any) -> None:
    rec = Recorder(sse_response(anthropic_sse(anthropic_events())))

    def leak() -> None:
        stream = client(rec).messages.create(stream=True, **ARGS)
        next(iter(stream))

    leak()
    gc.collect()
    assert instrumented.only("chat").attributes[A.STREAM_END] == "abandoned"


def test_stream_failing_mid_way_is_error(instrumented: Any) -> None:
    head = anthropic_sse(anthropic_events()[:3])
    rec = Recorder(broken_sse(head))
    # anthropic's stream lets the transport error through as is; so must we
    # (anthropic >= 2.17 wraps it in APIConnectionError)
    with (
        pytest.raises((httpx2.ReadError, anthropic.APIConnectionError)),
        client(rec).messages.stream(**ARGS) as stream,
    ):
        stream.get_final_message()
    span = instrumented.only("chat")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.STREAM_END] == "error"


async def test_async_stream_cancelled_mid_way(instrumented: Any) -> None:
    rec = Recorder(hanging_sse(anthropic_sse(anthropic_events()[:3])))
    seen = asyncio.Event()

    async def consume() -> None:
        async with aclient(rec).messages.stream(**ARGS) as stream:
            async for _ in stream:
                seen.set()

    await cancelled_once(seen, consume(), timeout=5)
    assert instrumented.only("chat").attributes[A.STREAM_END] == "cancelled"


async def test_async_create_stream_consumed(instrumented: Any) -> None:
    rec = Recorder(sse_response(anthropic_sse(anthropic_events())))
    stream = await aclient(rec).messages.create(stream=True, **ARGS)
    kinds = [e.type async for e in stream]
    assert kinds[-1] == "message_stop"
    span = instrumented.only("chat")
    assert span.attributes[A.STREAM_END] == "consumed"
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 7


def test_refused_call_and_refused_stream_send_nothing(instrumented: Any) -> None:
    rec = Recorder(json_response(anthropic_message()))
    c = client(rec)
    with budgetspan.run("r", max_model_calls=0):
        with pytest.raises(budgetspan.BudgetExhausted):
            c.messages.create(**ARGS)
        with pytest.raises(budgetspan.BudgetExhausted), c.messages.stream(**ARGS):
            pass
    assert rec.requests == []
    assert instrumented.spans("chat") == []


def test_worst_case_from_max_tokens(instrumented: Any) -> None:
    rec = Recorder(json_response(anthropic_message()))
    big = {**ARGS, "max_tokens": 200_000, "model": "claude-3-opus-20240229"}
    with budgetspan.run("r", max_cost_usd=0.5), pytest.raises(budgetspan.BudgetExhausted) as info:
        client(rec).messages.create(**big)  # 200k output tokens of Opus: ~$15 worst case
    assert info.value.reason == "max_cost_usd"
    assert rec.requests == []


def test_retries_counted(instrumented: Any) -> None:
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    rec = Recorder(
        json_response(err, status=529, headers={"retry-after-ms": "1"}),
        json_response(anthropic_message()),
    )
    with budgetspan.run("r") as run:
        client(rec, max_retries=2).messages.create(**ARGS)
    assert len(rec.requests) == 2
    assert instrumented.only("chat").attributes[A.ATTEMPTS] == 2
    assert run.usage.retries == 1


def test_sdk_error_propagates_unchanged(instrumented: Any) -> None:
    err = {"type": "error", "error": {"type": "invalid_request_error", "message": "nope"}}
    rec = Recorder(json_response(err, status=400))
    with pytest.raises(anthropic.BadRequestError, match="nope"):
        client(rec).messages.create(**ARGS)
    span = instrumented.only("chat")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.ERROR_TYPE] == "BadRequestError"


@pytest.mark.parametrize(
    "usage",
    [{"input_tokens": "12", "output_tokens": "x"}, {"input_tokens": -1}, {}],
)
def test_malformed_usage_is_unreported(instrumented: Any, usage: Any) -> None:
    rec = Recorder(json_response(anthropic_message(usage=usage)))
    msg = client(rec).messages.create(**ARGS)
    assert msg.content[0].text == "hi"
    span = instrumented.only("chat")
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert A.GEN_AI_USAGE_COST not in span.attributes


def test_with_raw_response_counts_once(instrumented: Any) -> None:
    rec = Recorder(json_response(anthropic_message()))
    raw = client(rec).messages.with_raw_response.create(**ARGS)
    assert raw.parse().content[0].text == "hi"
    span = instrumented.only("chat")
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 10


def test_beta_messages_are_instrumented_too(instrumented: Any) -> None:
    rec = Recorder(
        json_response(
            anthropic_message(usage={"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 50})
        ),
        sse_response(anthropic_sse(anthropic_events())),
    )
    c = client(rec)
    c.beta.messages.create(**ARGS)
    with c.beta.messages.stream(**ARGS) as stream:
        stream.get_final_message()
    first, second = instrumented.spans("chat")
    assert first.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 53
    assert first.attributes[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 50
    assert second.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 7
    assert second.attributes[A.STREAM_END] == "consumed"


# --- a stream that ends before its final count (review10) ---------------------------------------
# ``message_start`` says ``output_tokens: 1``, a provisional figure; the real count comes in the
# last ``message_delta``. A stream left (or cut) before it had been charged 1 output token for
# thousands received; the server bills what it wrote. The text received is estimated instead.

LONG = tuple("lorem ipsum dolor sit amet " * 20 for _ in range(30))  # 16,200 characters
LONG_ESTIMATE = 16_200 // 3


def test_a_stream_left_before_its_final_count_is_charged_what_it_received(instrumented: Any) -> None:
    rec = Recorder(sse_response(anthropic_sse(anthropic_events(pieces=LONG))))
    with budgetspan.run("s") as run, client(rec).messages.stream(**ARGS) as stream:
        for n, _ in enumerate(stream.text_stream, 1):
            if n == len(LONG):
                break  # every piece received, the final message_delta not
    span = instrumented.only("chat")
    assert span.attributes[A.STREAM_END] == "closed"
    assert run.usage.output_tokens == LONG_ESTIMATE  # was 1
    assert span.attributes[A.USAGE_ESTIMATED_OUTPUT] == LONG_ESTIMATE
    assert run.usage.cost_usd > LONG_ESTIMATE * 1.25 / 1e6  # claude-3-haiku: $1.25 per M output


def test_a_stream_cut_before_its_final_count_is_charged_what_it_received(instrumented: Any) -> None:
    head = anthropic_sse(anthropic_events(pieces=LONG)[:-3])  # up to the last content_block_delta
    with budgetspan.run("s") as run:
        with pytest.raises((httpx2.ReadError, anthropic.APIConnectionError)):
            with client(Recorder(broken_sse(head))).messages.stream(**ARGS) as stream:
                stream.get_final_message()
    assert run.usage.output_tokens == LONG_ESTIMATE
    assert instrumented.only("chat").attributes[A.STREAM_END] == "error"


def test_a_stream_with_its_final_count_is_charged_the_count(instrumented: Any) -> None:
    """The control: the reported count stands, even below the estimate, and is not marked."""
    rec = Recorder(
        sse_response(anthropic_sse(anthropic_events(pieces=LONG, delta_usage={"output_tokens": 3000})))
    )
    with budgetspan.run("s") as run, client(rec).messages.stream(**ARGS) as stream:
        stream.get_final_message()
    assert run.usage.output_tokens == 3000
    assert A.USAGE_ESTIMATED_OUTPUT not in instrumented.only("chat").attributes


# --- one-hour cache writes (review10) -------------------------------------------------------------
# ``cache_control: {"ttl": "1h"}`` writes cost twice the input price, five-minute ones 1.25 times;
# the usage splits them in ``cache_creation``. All writes were priced at the five-minute rate.

SONNET = "claude-sonnet-4-5-20250929"
ONE_HOUR = {
    "input_tokens": 10,
    "output_tokens": 5,
    "cache_creation_input_tokens": 50_000,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 50_000},
}


def one_hour_cost() -> float:
    from budgetspan.accounting.pricing import default_resolver

    resolver = default_resolver()
    five_minutes = resolver.cost("anthropic", SONNET, 50_010, 5, 0, 50_000)
    uncached = resolver.cost("anthropic", SONNET, 50_010, 0)  # the input rate at this size
    assert five_minutes is not None and uncached is not None
    return five_minutes + 50_000 * (2.0 - 1.25) * uncached / 50_010  # $0.30 of writes, not $0.1875


def test_one_hour_cache_writes_are_priced_at_their_rate(instrumented: Any) -> None:
    rec = Recorder(json_response(anthropic_message(model=SONNET, usage=ONE_HOUR)))
    with budgetspan.run("c") as run:
        client(rec).messages.create(**{**ARGS, "model": SONNET})
    assert run.usage.cost_usd == pytest.approx(one_hour_cost())
    assert instrumented.only("chat").attributes[A.GEN_AI_USAGE_COST] == pytest.approx(one_hour_cost())


def test_one_hour_cache_writes_in_a_stream(instrumented: Any) -> None:
    start = {k: v for k, v in ONE_HOUR.items() if k != "output_tokens"} | {"output_tokens": 1}
    events = anthropic_events(model=SONNET, start_usage=start, delta_usage={"output_tokens": 5})
    with (
        budgetspan.run("c") as run,
        client(Recorder(sse_response(anthropic_sse(events)))).messages.stream(
            **{**ARGS, "model": SONNET}
        ) as stream,
    ):
        stream.get_final_message()
    assert run.usage.cost_usd == pytest.approx(one_hour_cost())
