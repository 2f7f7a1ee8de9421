"""The Bedrock and Mistral usage parsers on the shapes the recordings do not cover: every
Bedrock input figure gains its cache reads and writes; a malformed figure is unreported."""

from __future__ import annotations

from typing import Any

import pytest

from budgetspan.accounting.ledger import Spend
from budgetspan.instrumentation.usage import (
    bedrock_body_usage,
    bedrock_converse_usage,
    bedrock_header_usage,
    bedrock_metrics_usage,
    mistral_usage,
)


def figures(spend: Spend | None) -> tuple[Any, ...] | None:
    if spend is None:
        return None
    return (spend.input_tokens, spend.output_tokens, spend.cache_read_tokens, spend.cache_write_tokens)


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        (
            {"x-amzn-bedrock-input-token-count": "4", "x-amzn-bedrock-output-token-count": "50"},
            (4, 50, None, None),
        ),
        (
            {
                "x-amzn-bedrock-input-token-count": "4",
                "x-amzn-bedrock-output-token-count": "50",
                "x-amzn-bedrock-cache-read-input-token-count": "10",
                "x-amzn-bedrock-cache-write-input-token-count": "20",
            },
            (34, 50, 10, 20),
        ),
        ({"x-amzn-bedrock-input-token-count": "abc", "x-amzn-bedrock-output-token-count": "-1"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_header_usage(headers: Any, want: Any) -> None:
    assert figures(bedrock_header_usage(headers)) == want


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"usage": {"input_tokens": 3, "output_tokens": 5, "cache_read_input_tokens": 7}}, (10, 5, 7, None)),
        ({"usage": {"inputTokens": 3, "outputTokens": 5, "cacheWriteInputTokens": 2}}, (5, 5, None, 2)),
        ({"usage": {"prompt_tokens": 8, "completion_tokens": 2}}, (8, 2, None, None)),
        ({"prompt_token_count": 6, "generation_token_count": 9}, (6, 9, None, None)),
        ({"inputTextTokenCount": 4, "results": [{"tokenCount": 3}, {"tokenCount": 2}]}, (4, 5, None, None)),
        ({"inputTextTokenCount": 4, "results": [{"tokenCount": "x"}]}, (4, None, None, None)),
        ({"embedding": [0.1]}, None),
        (None, None),
    ],
)
def test_body_usage(body: Any, want: Any) -> None:
    assert figures(bedrock_body_usage(body)) == want


def test_converse_and_stream_metrics_add_the_cache() -> None:
    usage = {"inputTokens": 1, "outputTokens": 2, "cacheReadInputTokens": 3, "cacheWriteInputTokens": 4}
    assert figures(bedrock_converse_usage(usage)) == (8, 2, 3, 4)
    metrics = {"inputTokenCount": 5, "outputTokenCount": 6, "cacheReadInputTokenCount": 7}
    assert figures(bedrock_metrics_usage(metrics)) == (12, 6, 7, None)
    assert bedrock_converse_usage({"inputTokens": None, "outputTokens": True}) is None


@pytest.mark.parametrize(
    ("usage", "embeddings", "want"),
    [
        ({"prompt_tokens": 11, "completion_tokens": 96}, False, (11, 96, None, None)),
        (
            {"prompt_tokens": 11, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 5}},
            False,
            (11, 0, 5, None),
        ),
        ({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 9}}, False, (3, None, None, None)),
        ({"prompt_tokens": 10}, True, (10, 0, None, None)),
        ({}, True, None),
        ({"total_tokens": 4}, False, None),
    ],
)
def test_mistral_usage(usage: dict[str, Any], embeddings: bool, want: Any) -> None:
    from mistralai.client.models import UsageInfo

    # the SDK's own model (which fills absent counts with 0) and the plain dict read alike
    assert figures(mistral_usage(UsageInfo.model_validate(usage), embeddings)) == want
    assert figures(mistral_usage(usage, embeddings)) == want
