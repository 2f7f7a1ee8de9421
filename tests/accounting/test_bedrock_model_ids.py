"""Bedrock model ids (``us.anthropic.claude-...-v1:0``, ARNs) find their price and their
maximum output: the worst case a call reserves must not be lost to the id's decorations."""

from __future__ import annotations

import pytest

from budgetspan.accounting.model_limits import bedrock_base_model, max_output_tokens
from budgetspan.accounting.pricing import PriceResolver

HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"


@pytest.mark.parametrize(
    ("model_id", "base"),
    [
        (HAIKU, "claude-3-5-haiku-20241022"),
        ("us." + HAIKU, "claude-3-5-haiku-20241022"),
        ("us-gov." + HAIKU, "claude-3-5-haiku-20241022"),
        ("global.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4-20250514"),
        ("anthropic.claude-3-sonnet-20240229-v1:0:200k", "claude-3-sonnet-20240229"),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu." + HAIKU, "claude-3-5-haiku-20241022"),
        ("arn:aws:bedrock:us-east-1::foundation-model/" + HAIKU, "claude-3-5-haiku-20241022"),
        ("meta.llama3-2-1b-instruct-v1:0", "llama3-2-1b-instruct"),
        ("mistral.mistral-large-2402-v1:0", "mistral-large-2402"),
        ("amazon.nova-lite-v1:0", "nova-lite"),
        # not Bedrock ids: unchanged
        ("gpt-4.1", "gpt-4.1"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku-latest"),
        ("openai/gpt-4o", "openai/gpt-4o"),
    ],
)
def test_bedrock_base_model(model_id: str, base: str) -> None:
    assert bedrock_base_model(model_id) == base


def test_max_output_of_a_bedrock_id_is_its_model_family_maximum() -> None:
    assert max_output_tokens("us." + HAIKU) == max_output_tokens("claude-3-5-haiku-20241022") == 8192
    assert max_output_tokens("mistral.mistral-large-2402-v1:0") == 32_768
    assert max_output_tokens("gpt-4.1") == 32_768  # dots in plain ids are left alone


@pytest.mark.parametrize(
    "model_id",
    [
        "us." + HAIKU,
        "eu." + HAIKU,
        "arn:aws:bedrock:us-east-1::foundation-model/" + HAIKU,
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us." + HAIKU,
        "anthropic.claude-3-5-haiku-20241022-v1:0:200k",
    ],
)
def test_every_form_of_a_bedrock_id_has_the_same_price(model_id: str) -> None:
    resolver = PriceResolver()
    want = resolver.cost("aws.bedrock", HAIKU, 1_000_000, 1_000_000, 100_000, 50_000)
    assert want is not None
    assert resolver.cost("aws.bedrock", model_id, 1_000_000, 1_000_000, 100_000, 50_000) == pytest.approx(
        want
    )


def test_an_unknown_bedrock_model_is_unpriced_not_free() -> None:
    resolver = PriceResolver()
    assert resolver.cost("aws.bedrock", "arn:aws:bedrock:us-east-1:1:provisioned-model/abc", 10, 10) is None
    assert resolver.cost("aws.bedrock", "anthropic.claude-not-a-model-v1:0", 10, 10) is None


@pytest.mark.parametrize(
    ("model", "most"),
    [
        ("gpt-4.5-preview", 16_384),  # was gpt-4's 8,192: half its worst case held
        ("chatgpt-4o-latest", 16_384),  # was unknown
        ("claude-opus-4-5-20251101", 64_000),  # was Opus 4's 32,000
        ("us.anthropic.claude-opus-4-5-20251101-v1:0", 64_000),
        ("claude-opus-4-1-20250805", 32_000),
        ("gemini-3-pro-preview", 65_536),  # was unknown
        ("gpt-4-0613", 8_192),
    ],
)
def test_newer_models_hold_their_whole_maximum_output(model: str, most: int) -> None:
    """review10: a model's maximum output is its worst case when a request sets no limit."""
    assert max_output_tokens(model) == most
