"""Usage parsers: each provider's semantics, and garbage in => unreported out, never a crash."""

from __future__ import annotations

from typing import Any

from anthropic.types import Message, RawMessageDeltaEvent, RawMessageStartEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CompletionUsage
from openai.types.responses import ResponseUsage

from budgetspan.accounting.ledger import Spend
from budgetspan.instrumentation.usage import (
    AnthropicStreamUsage,
    anthropic_usage,
    count,
    openai_embeddings_usage,
    openai_usage,
)


def test_openai_chat_prompt_tokens_already_include_cached() -> None:
    usage = CompletionUsage.model_validate(
        {
            "prompt_tokens": 1149,
            "completion_tokens": 353,
            "total_tokens": 1502,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 64},
        }
    )
    assert openai_usage(usage) == Spend(1149, 353, 1024, None, 64)


def test_openai_responses_usage() -> None:
    usage = ResponseUsage.model_validate(
        {
            "input_tokens": 18,
            "output_tokens": 79,
            "total_tokens": 97,
            "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 10},
            "output_tokens_details": {"reasoning_tokens": 5},
        }
    )
    assert openai_usage(usage) == Spend(18, 79, 4, 10, 5)


def test_openai_dict_bodies_and_embeddings() -> None:
    assert openai_usage({"prompt_tokens": 3, "completion_tokens": 4}) == Spend(3, 4)
    assert openai_embeddings_usage({"prompt_tokens": 8, "total_tokens": 8}) == Spend(8, 0)
    assert openai_embeddings_usage({"total_tokens": 8}) is None


def test_cached_more_than_prompt_is_not_trusted() -> None:
    spend = openai_usage(
        {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 50}}
    )
    assert spend == Spend(10, 1, None)


def test_anthropic_input_excludes_cache_so_we_add_it() -> None:
    msg = Message.model_validate(
        {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": "claude",
            "content": [],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 4,
                "output_tokens": 187,
                "cache_creation_input_tokens": 1163,
                "cache_read_input_tokens": 0,
            },
        }
    )
    assert anthropic_usage(msg.usage) == Spend(1167, 187, 0, 1163)


def test_anthropic_stream_171_not_174() -> None:
    acc = AnthropicStreamUsage()
    start = RawMessageStartEvent.model_validate(
        {
            "type": "message_start",
            "message": {
                "id": "m",
                "type": "message",
                "role": "assistant",
                "model": "claude-3-haiku-20240307",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 17, "output_tokens": 3},
            },
        }
    )
    delta = RawMessageDeltaEvent.model_validate(
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 171}}
    )
    assert acc.on_event(start) and acc.spend() == Spend(17, 3)
    assert acc.on_event(delta)
    assert acc.spend() == Spend(17, 171)
    assert acc.on_event({"type": "content_block_delta"}) is False


def test_anthropic_delta_restating_input_replaces_it() -> None:
    acc = AnthropicStreamUsage()
    acc.on_event({"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}})
    acc.on_event(
        {
            "type": "message_delta",
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 10, "output_tokens": 9},
        }
    )
    assert acc.spend() == Spend(15, 9, 10, None)


def test_anthropic_stream_without_usage_is_unreported() -> None:
    acc = AnthropicStreamUsage()
    acc.on_event({"type": "message_start", "message": {}})
    acc.on_event({"type": "message_delta", "usage": {"output_tokens": "lots"}})
    assert acc.spend() is None
    # positive control: the same accumulator does take a usable count when one comes
    acc.on_event({"type": "message_delta", "usage": {"output_tokens": 9}})
    assert acc.spend() == Spend(None, 9)


def test_count() -> None:
    assert count(0) == 0 and count(5) == 5 and count(5.0) == 5
    for bad in (None, True, False, -1, "5", 5.5, float("nan"), float("inf"), [], {}):
        assert count(bad) is None


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**9) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=30), inner, max_size=4)
    ),
    max_leaves=10,
)
keys = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "prompt_tokens_details",
        "input_tokens_details",
        "usage",
        "type",
        "message",
    ]
)
usage_like = st.dictionaries(keys, junk, max_size=6)


@settings(max_examples=300, deadline=None)
@given(usage_like)
def test_parsers_never_crash_and_never_invent_negative_numbers(usage: dict[str, Any]) -> None:
    for parse in (openai_usage, anthropic_usage, openai_embeddings_usage):
        spend = parse(usage)
        if spend is not None:
            for v in (
                spend.input_tokens,
                spend.output_tokens,
                spend.cache_read_tokens,
                spend.cache_write_tokens,
            ):
                assert v is None or (isinstance(v, int) and v >= 0)
    acc = AnthropicStreamUsage()
    acc.on_event(usage)
    acc.on_event({"type": "message_delta", "usage": usage})
    spend = acc.spend()
    assert spend is None or spend.input_tokens is None or spend.input_tokens >= 0
    # Positive controls: a plain count among the junk is read, exactly (a parser that gave up on
    # everything would pass the checks above).
    prompt = usage.get("prompt_tokens")
    if type(prompt) is int and prompt >= 0:
        parsed = openai_usage(usage)
        assert parsed is not None and parsed.input_tokens == prompt
    out = usage.get("output_tokens")
    if type(out) is int and out >= 0:
        parsed = anthropic_usage(usage)
        assert parsed is not None and parsed.output_tokens == out
