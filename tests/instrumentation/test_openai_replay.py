"""Every recorded OpenAI exchange replayed through the real ``openai`` SDK (vcrpy, no network):
the span's tokens equal the recorded usage exactly and its cost equals genai-prices' price."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from budgetspan import attributes as A
from tests.replay import (
    all_cassettes,
    endpoints_of,
    expected_cost,
    replay,
    requests_of,
)

# cassette -> per interaction: (input, output, cache_read, reasoning); None = no usage reported
EXPECTED: dict[str, list[tuple[int, int, int | None, int | None] | None]] = {
    "openai/test_chat__test_chat.yaml": [
        (15, 19, None, None),
        (15, 31, 0, 0),
        (15, 22, 0, 0),
        (15, 19, 0, 0),
    ],
    "openai/test_chat__test_chat_tools.yaml": [(68, 16, None, None)],
    "openai/test_chat__test_chat_tools_streaming.yaml": [None],
    "openai/test_embeddings__test_embeddings.yaml": [(8, 0, None, None)] * 4,
    "openai/test_prompt_caching__test_openai_prompt_caching.yaml": [
        (1149, 315, 0, 0),
        (1149, 353, 1024, 0),
        (1149, 297, 0, 0),
        (1149, 339, 0, 0),
    ],
    "openai/test_responses__test_responses_streaming.yaml": [(18, 79, 0, 0), (18, 80, 0, 0)],
}


def test_every_openai_cassette_is_covered() -> None:
    assert sorted(EXPECTED) == [c for c in all_cassettes() if c.startswith("openai/")]


def _call(client: openai.OpenAI, path: str, body: dict[str, Any]) -> None:
    if path.endswith("embeddings"):
        client.embeddings.create(**body)
    elif path.endswith("responses"):
        for _ in client.responses.create(**body):
            pass
    elif body.get("stream"):
        for _ in client.chat.completions.create(**body):
            pass
    else:
        client.chat.completions.create(**body)


def _check(span: Any, want: tuple[int, int, int | None, int | None] | None) -> None:
    attrs = dict(span.attributes)
    assert attrs[A.GEN_AI_PROVIDER_NAME] == "openai"
    if want is None:
        assert attrs[A.USAGE_UNREPORTED] is True
        for key in (A.GEN_AI_USAGE_INPUT_TOKENS, A.GEN_AI_USAGE_OUTPUT_TOKENS, A.GEN_AI_USAGE_COST):
            assert key not in attrs
        return
    inp, out, cached, reasoning = want
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == inp
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == out
    assert attrs.get(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS) == cached
    assert attrs.get(A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS) == reasoning
    assert A.USAGE_UNREPORTED not in attrs
    cost = expected_cost("openai", attrs[A.GEN_AI_RESPONSE_MODEL], inp, out, cached or 0)
    if cost is None:
        assert A.GEN_AI_USAGE_COST not in attrs and attrs[A.COST_UNPRICED] is True
    else:
        assert attrs[A.GEN_AI_USAGE_COST] == pytest.approx(cost, rel=1e-12)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replay_sync(instrumented: Any, name: str) -> None:
    client = openai.OpenAI(api_key="test", max_retries=0)
    with replay(name) as cas:
        for path, body in zip(endpoints_of(name), requests_of(name), strict=True):
            _call(client, path, body)
        assert cas.all_played
    spans = instrumented.spans()
    assert len(spans) == len(EXPECTED[name])
    for span, want in zip(spans, EXPECTED[name], strict=True):
        _check(span, want)
        assert span.attributes[A.GEN_AI_REQUEST_MODEL] == requests_of(name)[0]["model"]


def test_replay_prompt_caching_counts_in_the_run(instrumented: Any) -> None:
    """The run's ledger sees the same figures the spans carry (no double count, no loss)."""
    import budgetspan

    name = "openai/test_prompt_caching__test_openai_prompt_caching.yaml"
    client = openai.OpenAI(api_key="test", max_retries=0)
    with replay(name), budgetspan.run("replay") as run:
        for body in requests_of(name):
            client.chat.completions.create(**body)
    usage = run.usage
    assert usage.model_calls == 4
    assert usage.input_tokens == 4 * 1149
    assert usage.output_tokens == 315 + 353 + 297 + 339
    total = sum(s.attributes[A.GEN_AI_USAGE_COST] for s in instrumented.spans("chat"))
    assert usage.cost_usd == pytest.approx(total, rel=1e-9)
    assert run.partial["last_model_answer"]


async def test_replay_async_chat_and_responses(instrumented: Any) -> None:
    client = openai.AsyncOpenAI(api_key="test", max_retries=0)
    name = "openai/test_prompt_caching__test_openai_prompt_caching.yaml"
    with replay(name):
        for body in requests_of(name):
            await client.chat.completions.create(**body)
    name2 = "openai/test_responses__test_responses_streaming.yaml"
    with replay(name2):
        for body in requests_of(name2):
            stream = await client.responses.create(**body)
            async for _ in stream:
                pass
    spans = instrumented.spans()
    want = EXPECTED[name] + EXPECTED[name2]
    assert len(spans) == len(want)
    for span, w in zip(spans, want, strict=True):
        _check(span, w)


def test_replay_responses_stream_helper(instrumented: Any) -> None:
    """``responses.stream(...)`` goes through ``responses.create``: one span, exact usage."""
    name = "openai/test_responses__test_responses_streaming.yaml"
    client = openai.OpenAI(api_key="test", max_retries=0)
    body = {k: v for k, v in requests_of(name)[0].items() if k != "stream"}
    with replay(name), client.responses.stream(**body) as stream:
        final = stream.get_final_response()
    assert final.usage is not None and final.usage.output_tokens == 79
    (span,) = instrumented.spans()
    _check(span, EXPECTED[name][0])
    assert span.attributes[A.STREAM_END] == "consumed"


def test_replay_streamed_tool_call_without_usage_is_unreported_and_charged_an_estimate(
    instrumented: Any,
) -> None:
    import budgetspan

    name = "openai/test_chat__test_chat_tools_streaming.yaml"
    client = openai.OpenAI(api_key="test", max_retries=0)
    with replay(name), budgetspan.run("tools") as run:
        chunks = list(client.chat.completions.create(**requests_of(name)[0]))
    assert chunks
    (span,) = instrumented.spans("chat")
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert span.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
    assert run.usage.model_calls == 1
    # Unreported is never zero: the run is charged budgetspan's estimate, marked as one, and the
    # span's gen_ai.usage.* stays what the provider said (nothing).
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in span.attributes
    est_in, est_out = span.attributes[A.USAGE_ESTIMATED_INPUT], span.attributes[A.USAGE_ESTIMATED_OUTPUT]
    assert est_in > 0 and est_out > 0
    assert (run.usage.input_tokens, run.usage.output_tokens) == (est_in, est_out)
    assert run.usage.unreported_usage_calls == 1
    assert json.loads(json.dumps(dict(span.attributes), default=str))  # attributes are plain values
