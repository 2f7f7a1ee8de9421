"""LiteLLM as a client library through budgetspan: the real ``litellm`` against a local
OpenAI-compatible server (``openai/gpt-4o-mini`` with ``api_base``). One ``litellm.completion``
is one budgeted model call, also where LiteLLM goes through the OpenAI SDK (Azure) with
budgetspan's OpenAI instrumentation on; refused calls send nothing; tokens are the server's;
cost is budgetspan's unless ``BUDGETSPAN_LITELLM_COST=litellm``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

import budgetspan
from budgetspan import attributes as A
from budgetspan.accounting.pricing import PriceResolver, TokenPrice, default_resolver, set_default_resolver
from tests.instrumentation.llm_server import LLMServer, assert_usage
from tests.instrumentation.local_server import LocalServer, json_answer

MODEL = "gpt-4o-mini"
INPUT, OUTPUT = 21, 5  # the fake's usage
MESSAGES = [{"role": "user", "content": "hi"}]


def args(server: LLMServer, **kw: Any) -> dict[str, Any]:
    return {"model": f"openai/{MODEL}", "api_base": f"{server.base_url}/v1", "api_key": "k", **kw}


def budgetspan_cost() -> float:
    cost = default_resolver().cost("openai", MODEL, INPUT, OUTPUT, 0)
    assert cost is not None and cost > 0
    return cost


def assert_exact(span: Any) -> None:
    assert_usage(span, "openai", MODEL, (INPUT, OUTPUT), budgetspan_cost())


def test_completion_is_one_call_with_exact_tokens(litellm_instrumented: Any, llm_server: LLMServer) -> None:
    with budgetspan.run("r") as run:
        response = litellm.completion(messages=MESSAGES, max_tokens=20, **args(llm_server))
        litellm.completion(f"openai/{MODEL}", MESSAGES, api_base=f"{llm_server.base_url}/v1", api_key="k")
    assert response.choices[0].message.content == "Hello from the fake."
    assert len(llm_server.requests) == 2
    spans = litellm_instrumented.spans("chat")
    assert len(spans) == 2  # positional model and messages alike
    for span in spans:
        assert_exact(span)
        assert span.attributes[A.SERVER_ADDRESS] == "127.0.0.1"
    assert spans[0].attributes[A.GEN_AI_REQUEST_MAX_TOKENS] == 20
    assert (run.usage.model_calls, run.usage.input_tokens, run.usage.output_tokens) == (
        2,
        2 * INPUT,
        2 * OUTPUT,
    )
    assert run.usage.cost_usd == pytest.approx(2 * budgetspan_cost())


def test_stream_asks_for_usage_and_hides_its_chunk(litellm_instrumented: Any, llm_server: LLMServer) -> None:
    with budgetspan.run("r") as run:
        chunks = list(litellm.completion(messages=MESSAGES, stream=True, **args(llm_server)))
    assert llm_server.requests[0].body["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)  # the caller sees only the chunks it asked for
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake."
    [span] = litellm_instrumented.spans("chat")
    assert_exact(span)
    assert span.attributes[A.STREAM_END] == "consumed"
    assert (run.usage.model_calls, run.usage.input_tokens, run.usage.output_tokens) == (1, INPUT, OUTPUT)


async def test_acompletion_and_async_stream(litellm_instrumented: Any, llm_server: LLMServer) -> None:
    async with budgetspan.run("r") as run:
        response = await litellm.acompletion(messages=MESSAGES, **args(llm_server))
        stream = await litellm.acompletion(messages=MESSAGES, stream=True, **args(llm_server))
        chunks = [chunk async for chunk in stream]
    assert response.choices[0].message.content == "Hello from the fake."
    assert all(chunk.choices for chunk in chunks)
    assert len(llm_server.requests) == 2
    spans = litellm_instrumented.spans("chat")
    assert len(spans) == 2  # acompletion runs completion inside: still one call each
    for span in spans:
        assert_exact(span)
    assert spans[1].attributes[A.STREAM_END] == "consumed"
    assert (run.usage.model_calls, run.usage.input_tokens) == (2, 2 * INPUT)


def test_refused_calls_send_nothing(litellm_instrumented: Any, llm_server: LLMServer) -> None:
    with budgetspan.run("r", max_model_calls=1), pytest.raises(budgetspan.BudgetExhausted) as info:
        litellm.completion(messages=MESSAGES, **args(llm_server))
        litellm.completion(messages=MESSAGES, **args(llm_server))
    assert info.value.reason == "max_model_calls"
    assert info.value.partial["last_model_answer"] == "Hello from the fake."
    with budgetspan.run("r", max_model_calls=0), pytest.raises(budgetspan.BudgetExhausted):
        litellm.completion(messages=MESSAGES, stream=True, **args(llm_server))
    with budgetspan.run("r", max_cost_usd=0.001), pytest.raises(budgetspan.BudgetExhausted) as info:
        # 100k output tokens of gpt-4o-mini could cost $0.06: over the whole budget
        litellm.completion(messages=MESSAGES, max_tokens=100_000, **args(llm_server))
    assert info.value.reason == "max_cost_usd"
    assert len(llm_server.requests) == 1
    assert len(litellm_instrumented.spans("chat")) == 1


async def test_refused_async_calls_send_nothing(litellm_instrumented: Any, llm_server: LLMServer) -> None:
    async with budgetspan.run("r", max_model_calls=0):
        with pytest.raises(budgetspan.BudgetExhausted):
            await litellm.acompletion(messages=MESSAGES, **args(llm_server))
        with pytest.raises(budgetspan.BudgetExhausted):
            await litellm.acompletion(messages=MESSAGES, stream=True, **args(llm_server))
    assert llm_server.requests == []


def azure(server: LLMServer) -> dict[str, Any]:
    """LiteLLM sends Azure OpenAI requests through the OpenAI SDK's ``chat.completions``."""
    return {
        "model": "azure/gpt-4o-mini",
        "api_base": server.base_url,
        "api_key": "k",
        "api_version": "2024-10-21",
    }


def test_a_request_through_the_openai_sdk_is_counted_once(
    litellm_instrumented: Any, llm_server: LLMServer
) -> None:
    with budgetspan.run("r") as run:
        litellm.completion(messages=MESSAGES, **azure(llm_server))
        list(litellm.completion(messages=MESSAGES, stream=True, **azure(llm_server)))
    assert len(llm_server.requests) == 2
    spans = litellm_instrumented.spans("chat")
    assert len(spans) == 2
    assert {s.attributes[A.GEN_AI_PROVIDER_NAME] for s in spans} == {"azure.ai.openai"}
    assert (run.usage.model_calls, run.usage.input_tokens, run.usage.output_tokens) == (
        2,
        2 * INPUT,
        2 * OUTPUT,
    )


def test_the_azure_path_really_goes_through_the_openai_sdk(tracing: Any, llm_server: LLMServer) -> None:
    """The control for the test above: with only the OpenAI instrumentation on, it sees the call."""
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()
    try:
        with budgetspan.run("r") as run:
            litellm.completion(messages=MESSAGES, **azure(llm_server))
    finally:
        OpenAIInstrumentor().uninstrument()
    assert run.usage.model_calls == 1
    assert len(tracing.spans("chat")) == 1


def test_unreported_usage_is_charged_an_estimate(
    litellm_instrumented: Any, llm_server: LLMServer, monkeypatch: Any
) -> None:
    """LiteLLM turns a missing usage into zeros: never taken as a free call."""
    llm_server.settings.openai_usage = None
    monkeypatch.setenv(A.ENV_OPENAI_STREAM_USAGE, "never")  # a stream nobody asked usage for
    with budgetspan.run("r") as run:
        litellm.completion(messages=MESSAGES, **args(llm_server))
        list(litellm.completion(messages=MESSAGES, stream=True, **args(llm_server)))
    spans = litellm_instrumented.spans("chat")
    assert len(spans) == 2
    for span in spans:
        assert span.attributes[A.USAGE_UNREPORTED] is True
        assert span.attributes[A.USAGE_ESTIMATED_INPUT] > 0
        assert span.attributes[A.USAGE_ESTIMATED_OUTPUT] > 0
        assert span.attributes[A.COST_ESTIMATED] > 0
    assert run.usage.unreported_usage_calls == 2
    assert run.usage.input_tokens > 0 and run.usage.output_tokens > 0 and run.usage.cost_usd > 0


@pytest.fixture
def odd_budgetspan_price() -> Iterator[float]:
    """budgetspan prices gpt-4o-mini at $100/$100 per million tokens, unlike LiteLLM's table."""
    set_default_resolver(PriceResolver({("openai", MODEL): TokenPrice(100.0, 100.0)}))
    try:
        yield (INPUT + OUTPUT) * 100.0 / 1e6
    finally:
        set_default_resolver(None)


def litellm_cost() -> float:
    prompt, completion = litellm.cost_per_token(
        model=MODEL, custom_llm_provider="openai", prompt_tokens=INPUT, completion_tokens=OUTPUT
    )
    return float(prompt) + float(completion)


def test_cost_is_budgetspans_unless_litellms_is_chosen(
    litellm_instrumented: Any, llm_server: LLMServer, odd_budgetspan_price: float, monkeypatch: Any
) -> None:
    with budgetspan.run("r") as run:
        litellm.completion(messages=MESSAGES, **args(llm_server))
    assert run.usage.cost_usd == pytest.approx(odd_budgetspan_price)
    [span] = litellm_instrumented.spans("chat")
    assert A.COST_SOURCE not in span.attributes

    monkeypatch.setenv(A.ENV_LITELLM_COST, "litellm")
    with budgetspan.run("r") as run:
        litellm.completion(messages=MESSAGES, **args(llm_server))
        list(litellm.completion(messages=MESSAGES, stream=True, **args(llm_server)))
    assert litellm_cost() < odd_budgetspan_price / 100
    assert run.usage.cost_usd == pytest.approx(2 * litellm_cost())
    for span in litellm_instrumented.spans("chat")[1:]:
        assert span.attributes[A.GEN_AI_USAGE_COST] == pytest.approx(litellm_cost())
        assert span.attributes[A.COST_SOURCE] == "litellm"


def test_a_bad_cost_switch_is_said_and_budgetspans_price_kept(
    litellm_instrumented: Any,
    llm_server: LLMServer,
    odd_budgetspan_price: float,
    monkeypatch: Any,
    caplog: Any,
) -> None:
    from budgetspan.config import get_config, load_config

    get_config()  # read before the switch changes: configure() would refuse it (ConfigError, below)
    monkeypatch.setenv(A.ENV_LITELLM_COST, "theirs")
    with pytest.raises(budgetspan.ConfigError, match=A.ENV_LITELLM_COST):
        load_config()
    with caplog.at_level(logging.ERROR), budgetspan.run("r") as run:
        litellm.completion(messages=MESSAGES, **args(llm_server))
    assert run.usage.cost_usd == pytest.approx(odd_budgetspan_price)
    assert A.ENV_LITELLM_COST in caplog.text


def test_configure_and_opentelemetry_instrument_find_both_instrumentors() -> None:
    from importlib.metadata import entry_points

    from budgetspan.instrumentation import available_instrumentors

    found = {type(i).__name__ for i in available_instrumentors()}
    assert {"GoogleGenAIInstrumentor", "LiteLLMInstrumentor"} <= found
    names = {e.name for e in entry_points(group="opentelemetry_instrumentor")}
    assert {"budgetspan_google_genai", "budgetspan_litellm"} <= names


# --- LiteLLM's own retries and fallbacks (review10) --------------------------------------------
# LiteLLM catches a refusal raised inside it (the OpenAI SDK's retry hook) like any provider
# error, then retries (``num_retries``) or falls back (``fallbacks``) by calling itself again:
# those attempts were let through uncounted, so ``max_retries`` did not hold and the refusal
# never reached the caller (4 requests under ``max_retries=1``, a fallback request under
# ``max_retries=0``, and an answer).

FAIL = json_answer({"error": {"message": "overloaded"}}, 500)


def ok_answer(model: str = MODEL) -> Any:
    return json_answer(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": INPUT, "completion_tokens": OUTPUT, "total_tokens": INPUT + OUTPUT},
        }
    )


def local(server: LocalServer, **kw: Any) -> dict[str, Any]:
    return {
        "model": f"openai/{MODEL}",
        "api_base": f"{server.url}/v1",
        "api_key": "k",
        "messages": MESSAGES,
        **kw,
    }


def models_sent(server: LocalServer) -> list[str]:
    return [json.loads(r.body)["model"] for r in server.requests]


def test_num_retries_are_held_to_max_retries(litellm_instrumented: Any, server: LocalServer) -> None:
    server.reset(FAIL, FAIL, FAIL, ok_answer())
    with budgetspan.run("r", max_retries=1) as run, pytest.raises(budgetspan.BudgetExhausted) as info:
        litellm.completion(**local(server, num_retries=3))
    assert info.value.reason == "max_retries"
    assert len(server.requests) == 2  # the call and its one permitted retry
    assert run.usage.retries == 1 and run.outcome == "budget_exhausted"


async def test_async_num_retries_are_held_to_max_retries(
    litellm_instrumented: Any, server: LocalServer
) -> None:
    server.reset(FAIL, FAIL, FAIL, ok_answer())
    async with budgetspan.run("r", max_retries=1) as run:
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            await litellm.acompletion(**local(server, num_retries=3))
    assert info.value.reason == "max_retries"
    assert len(server.requests) == 2
    assert run.usage.retries == 1


def test_a_fallback_is_an_attempt_refused_at_max_retries(
    litellm_instrumented: Any, server: LocalServer
) -> None:
    server.reset(FAIL, ok_answer("gpt-4o"))
    with budgetspan.run("r", max_retries=0), pytest.raises(budgetspan.BudgetExhausted) as info:
        litellm.completion(**local(server, fallbacks=["openai/gpt-4o"]))
    assert info.value.reason == "max_retries"
    assert models_sent(server) == [MODEL]  # the fallback model was never asked


def test_a_fallback_within_the_budget_is_counted_and_priced(
    litellm_instrumented: Any, server: LocalServer
) -> None:
    server.reset(FAIL, FAIL, FAIL, ok_answer("gpt-4o"))
    with budgetspan.run("r", max_retries=5) as run:
        response = litellm.completion(**local(server, fallbacks=["openai/gpt-4o"]))
    assert response.choices[0].message.content == "hi"
    assert models_sent(server) == [MODEL, MODEL, MODEL, "gpt-4o"]  # 2 SDK retries, then the fallback
    assert (run.usage.model_calls, run.usage.retries) == (1, 3)
    assert run.usage.cost_usd == pytest.approx(default_resolver().cost("openai", "gpt-4o", INPUT, OUTPUT, 0))


async def test_a_call_without_retries_is_no_retry(litellm_instrumented: Any, llm_server: LLMServer) -> None:
    """The control: one request per call, whole or streamed, sync or async, is never taken for a retry."""
    async with budgetspan.run("r", max_retries=0) as run:
        litellm.completion(messages=MESSAGES, **args(llm_server))
        list(litellm.completion(messages=MESSAGES, stream=True, **args(llm_server)))
        await litellm.acompletion(messages=MESSAGES, **args(llm_server))
        stream = await litellm.acompletion(messages=MESSAGES, stream=True, **args(llm_server))
        [chunk async for chunk in stream]
        litellm.completion(messages=MESSAGES, **args(llm_server), num_retries=2, fallbacks=["openai/gpt-4o"])
    assert (run.usage.model_calls, run.usage.retries, run.outcome) == (5, 0, "success")
    assert len(llm_server.requests) == 5
