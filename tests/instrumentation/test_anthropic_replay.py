"""Every recorded Anthropic exchange replayed through the real ``anthropic`` SDK (vcrpy, no
network): exact tokens in OpenTelemetry terms (input includes cache reads and writes), the
streamed output is 171 (the cumulative ``message_delta``), and the cost is genai-prices' price."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

import budgetspan
from budgetspan import attributes as A
from tests.replay import all_cassettes, expected_cost, replay, requests_of

STREAMING = "anthropic/test_messages__test_anthropic_message_streaming_legacy.yaml"

# cassette -> per interaction: (input incl. cache, output, cache_read, cache_write)
EXPECTED: dict[str, list[tuple[int, int, int | None, int | None]]] = {
    "anthropic/test_messages__test_anthropic_message_create_legacy.yaml": [(17, 220, None, None)],
    STREAMING: [(17, 171, None, None)],
    "anthropic/test_messages__test_anthropic_tools_legacy.yaml": [(514, 152, None, None)],
    "anthropic/test_prompt_caching__test_anthropic_prompt_caching_legacy.yaml": [
        (4 + 1163, 187, 0, 1163),
        (4 + 1163, 202, 1163, 0),
    ],
}


def test_every_anthropic_cassette_is_covered() -> None:
    assert sorted(EXPECTED) == [c for c in all_cassettes() if c.startswith("anthropic/")]


def _check(span: Any, want: tuple[int, int, int | None, int | None]) -> None:
    attrs = dict(span.attributes)
    inp, out, cr, cw = want
    assert attrs[A.GEN_AI_PROVIDER_NAME] == "anthropic"
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == inp
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == out
    assert attrs.get(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS) == cr
    assert attrs.get(A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS) == cw
    cost = expected_cost("anthropic", attrs[A.GEN_AI_RESPONSE_MODEL], inp, out, cr or 0, cw or 0)
    assert cost is not None
    assert attrs[A.GEN_AI_USAGE_COST] == pytest.approx(cost, rel=1e-12)
    assert attrs[A.GEN_AI_REQUEST_MAX_TOKENS] == 1024
    assert attrs[A.GEN_AI_RESPONSE_ID].startswith("msg_")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replay_create(instrumented: Any, name: str) -> None:
    client = anthropic.Anthropic(api_key="test", max_retries=0)
    with replay(name) as cas:
        for body in requests_of(name):
            result = client.messages.create(**body)
            if body.get("stream"):
                events = [e.type for e in result]
                assert events[0] == "message_start" and events[-1] == "message_stop"
        assert cas.all_played
    spans = instrumented.spans()
    assert len(spans) == len(EXPECTED[name])
    for span, want in zip(spans, EXPECTED[name], strict=True):
        _check(span, want)


def test_stream_helper_says_171_not_174(instrumented: Any) -> None:
    client = anthropic.Anthropic(api_key="test", max_retries=0)
    body = {k: v for k, v in requests_of(STREAMING)[0].items() if k != "stream"}
    with replay(STREAMING), budgetspan.run("joke") as run, client.messages.stream(**body) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.usage.output_tokens == 171
    (span,) = instrumented.spans("chat")
    _check(span, EXPECTED[STREAMING][0])
    assert span.attributes[A.STREAM_END] == "consumed"
    assert span.attributes[A.TIME_TO_FIRST_TOKEN_S] >= 0
    assert run.usage.output_tokens == 171 and run.usage.input_tokens == 17
    assert run.partial["last_model_answer"] == text
    assert A.GEN_AI_OUTPUT_MESSAGES not in span.attributes  # content is off by default


async def test_async_stream_helper_and_create(instrumented: Any) -> None:
    client = anthropic.AsyncAnthropic(api_key="test", max_retries=0)
    body = {k: v for k, v in requests_of(STREAMING)[0].items() if k != "stream"}
    with replay(STREAMING):
        async with client.messages.stream(**body) as stream:
            final = await stream.get_final_message()
    assert final.usage.output_tokens == 171
    caching = "anthropic/test_prompt_caching__test_anthropic_prompt_caching_legacy.yaml"
    with replay(caching):
        for body in requests_of(caching):
            await client.messages.create(**body)
    spans = instrumented.spans("chat")
    assert len(spans) == 3
    for span, want in zip(spans, EXPECTED[STREAMING] + EXPECTED[caching], strict=True):
        _check(span, want)


def test_async_raw_event_stream(instrumented: Any) -> None:
    import asyncio

    async def main() -> list[str]:
        client = anthropic.AsyncAnthropic(api_key="test", max_retries=0)
        with replay(STREAMING):
            stream = await client.messages.create(**requests_of(STREAMING)[0])
            return [e.type async for e in stream]

    kinds = asyncio.run(main())
    assert kinds.count("message_delta") == 1
    (span,) = instrumented.spans("chat")
    _check(span, EXPECTED[STREAMING][0])
