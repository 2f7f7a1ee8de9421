"""Prices: genai-prices' own figures, cached lookups, unknown => None (never $0, never a guess
from another provider), and BUDGETSPAN_PRICES overrides reaching the spans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetspan import attributes as A
from budgetspan.accounting import pricing
from budgetspan.accounting.pricing import PriceConfigError, PriceResolver, load_price_file
from tests.replay import Recorder, chat_completion, json_response


def test_known_model_matches_genai_prices_with_cache() -> None:
    r = PriceResolver()
    got = r.cost("openai", "gpt-4o-mini", 1149, 353, 1024, 0)
    want = calc_price(
        Usage(input_tokens=1149, output_tokens=353, cache_read_tokens=1024),
        model_ref="gpt-4o-mini",
        provider_id="openai",
    ).total_price
    assert got == pytest.approx(float(want), rel=1e-12)
    # cached tokens are cheaper than fresh ones
    assert got < r.cost("openai", "gpt-4o-mini", 1149, 353)


def test_unknown_model_and_unknown_provider_are_unpriced() -> None:
    r = PriceResolver()
    assert r.cost("openai", "acme-llm-7", 10, 10) is None
    # a self-hosted server gets no price borrowed from a hosted provider
    assert r.cost("vllm", "gpt-4o-mini", 10, 10) is None
    # an unknown gateway serving an OpenAI model name is priced as genai-prices resolves it
    assert r.cost("openai_compatible", "gpt-4o-mini", 10, 10) == r.cost("openai", "gpt-4o-mini", 10, 10)
    assert r.cost("openai_compatible", "llama-3-8b-local", 10, 10) is None
    assert r.cost("openai", "gpt-4o-mini", None, None) is None  # nothing reported: no cost either


def test_semconv_provider_names_map_to_price_tables() -> None:
    r = PriceResolver()
    assert r.is_priced("anthropic", "claude-3-haiku-20240307")
    assert r.is_priced("azure.ai.openai", "gpt-4o-mini")


def test_lookup_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = pricing._lookup_genai_prices

    def spy(provider: str, model: str) -> Any:
        calls.append((provider, model))
        return real(provider, model)

    monkeypatch.setattr(pricing, "_lookup_genai_prices", spy)
    r = PriceResolver()
    for _ in range(5):
        r.cost("openai", "gpt-4o-mini", 10, 10)
        r.cost("openai", "nope-model", 10, 10)
    assert calls == [("openai", "gpt-4o-mini"), ("openai", "nope-model")]


def test_worst_case_cost() -> None:
    r = PriceResolver()
    assert r.worst_case_cost("openai", "gpt-4o-mini", 0, 1_000_000) == pytest.approx(0.6)
    assert r.worst_case_cost("openai", "gpt-4o-mini", 0, None) is None
    assert r.worst_case_cost("openai", "acme-llm-7", 0, 100) is None


def test_price_file_errors_name_the_variable(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('["vllm/llama"]\ninput_mtok = "cheap"\noutput_mtok = 1\n')
    with pytest.raises(PriceConfigError, match=A.ENV_PRICES):
        load_price_file(str(bad))
    with pytest.raises(PriceConfigError, match=A.ENV_PRICES):
        load_price_file(str(tmp_path / "missing.toml"))


def test_override_file_prices_a_self_hosted_model_on_the_span(
    instrumented: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('["vllm/llama-3-8b"]\ninput_mtok = 1.0\noutput_mtok = 2.0\n')
    monkeypatch.setenv(A.ENV_PRICES, str(prices))
    pricing.set_default_resolver(None)
    try:
        usage = {"prompt_tokens": 1000, "completion_tokens": 500}
        rec = Recorder(json_response(chat_completion(model="llama-3-8b", usage=usage)))
        c = openai.OpenAI(
            api_key="t", base_url="http://127.0.0.1:8000/v1", http_client=rec.sync(), max_retries=0
        )
        c.chat.completions.create(model="llama-3-8b", messages=[{"role": "user", "content": "hi"}])
    finally:
        pricing.set_default_resolver(None)
    (span,) = instrumented.spans("chat")
    assert span.attributes[A.GEN_AI_PROVIDER_NAME] == "vllm"
    assert span.attributes[A.GEN_AI_USAGE_COST] == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)


@settings(max_examples=200, deadline=None)
@given(
    model=st.sampled_from(["gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-latest", "no-such-model"]),
    inp=st.none() | st.integers(-10, 10**7) | st.floats(allow_nan=True) | st.just(10**400) | st.just("12"),
    out=st.none() | st.integers(-10, 10**7) | st.floats(allow_nan=True),
    cr=st.none() | st.just(0),
    cw=st.none() | st.just(0),
)
def test_property_the_usual_call_path_prices_as_the_general_one(
    model: str, inp: Any, out: Any, cr: Any, cw: Any
) -> None:
    """``cost`` answers a call without cache figures on a short path first; it must give what the
    general path gives for the same figures (a price, None for the unpriceable, never NaN or inf)."""
    r = PriceResolver()
    provider = "anthropic" if model.startswith("claude") else "openai"
    rates = pricing._rates(r._model_price(provider, model))
    general = None
    if model and not (inp is None and out is None):
        general = r._cost(rates, provider, model, inp, out, cr, cw)
    assert r.cost(provider, model, inp, out, cr, cw) == general


def test_a_negative_rate_set_in_code_prices_nothing() -> None:
    """Price files refuse negative rates; a resolver built in code with one gives unpriced, not a
    negative cost, on the usual-call path and the cache path alike."""
    r = PriceResolver({("acme", "m"): pricing.TokenPrice(-1.0, 2.0)})
    assert r.cost("acme", "m", 1000, 10) is None
    assert r.cost("acme", "m", 1000, 10, 100, 0) is None


def test_a_learnt_name_is_learnt_again_after_the_price_cache_was_emptied() -> None:
    """A deployment name priced as the model its answer named (``learn_name``) stays priced once
    the resolver's cache has been emptied (past 4,096 model names): the next answer teaches it
    again (was: forgotten for good, every later call's worst case unknown)."""
    resolver = PriceResolver()
    resolver.learn_name("openai", "prod-chat", "gpt-4o-2024-08-06")
    assert resolver.is_priced("openai", "prod-chat")
    for n in range(4_200):  # other names looked up: the cache is emptied once
        resolver.is_priced("openai", f"alias-{n}")
    resolver.learn_name("openai", "prod-chat", "gpt-4o-2024-08-06")  # the next answer
    assert resolver.is_priced("openai", "prod-chat")
    assert resolver.worst_case_cost("openai", "prod-chat", 100, 1_000) is not None
