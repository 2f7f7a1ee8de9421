"""A model called by a name no price table knows (an Azure OpenAI deployment, a LiteLLM or
gateway alias) whose answers name a priced model (review10). Each answer is priced by the model
it names, but the calls' worst cases were never held: under a dollar limit every call went out,
however large its ``max_tokens``, and 20 calls in parallel spent far past the limit. The name is
learnt from the first answer, and the calls after it hold their worst case at that model's price."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan.accounting.pricing import default_resolver
from tests.instrumentation.local_server import LocalServer, json_answer

DEPLOYMENT = "prod-chat"
ANSWERED = "gpt-4o-2024-08-06"


def answer() -> Any:
    return json_answer(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": ANSWERED,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 2000, "total_tokens": 2100},
        }
    )


def azure(server: LocalServer) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=server.url, api_version="2024-10-21", api_key="k", max_retries=0)


def chat(client: openai.AzureOpenAI, max_tokens: int) -> Any:
    return client.chat.completions.create(
        model=DEPLOYMENT, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens
    )


def test_a_deployment_name_is_priced_as_the_model_it_answers_with(
    instrumented: Any, server: LocalServer
) -> None:
    server.reset(answer())
    one = default_resolver().cost("openai", "gpt-4o", 100, 2000)
    assert one is not None and 0.02 < one < 0.03
    with budgetspan.run("r", max_cost_usd=0.05) as run, pytest.raises(budgetspan.BudgetExhausted) as info:
        chat(azure(server), max_tokens=2000)  # its name is not priced: let through, as said
        chat(azure(server), max_tokens=10_000)  # up to $0.10 at gpt-4o's price: refused
    assert info.value.reason == "max_cost_usd"
    assert len(server.requests) == 1
    assert run.usage.cost_usd == pytest.approx(one) and run.usage.unpriced_calls == 0


async def test_parallel_calls_of_a_deployment_hold_their_worst_case(
    instrumented: Any, server: LocalServer
) -> None:
    server.reset(answer())
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=server.url, api_version="2024-10-21", api_key="k", max_retries=0
    )

    async def one() -> str:
        try:
            await client.chat.completions.create(
                model=DEPLOYMENT, messages=[{"role": "user", "content": "hi"}], max_tokens=2000
            )
            return "sent"
        except budgetspan.BudgetExhausted:
            return "refused"

    async with budgetspan.run("r", max_cost_usd=0.10, suppress_exhausted=True) as run:
        await one()
        outcomes = await asyncio.gather(*(one() for _ in range(20)))
    sent = len(server.requests)
    assert sent <= 4 and outcomes.count("refused") == 21 - sent  # 2000 tokens each: $0.02 a call
    assert run.usage.cost_usd <= 0.10


def test_a_deployment_without_max_tokens_holds_its_models_maximum(
    instrumented: Any, server: LocalServer
) -> None:
    """gpt-4o writes at most 16,384 tokens ($0.16): with $0.10 left, a call without max_tokens is refused."""
    server.reset(answer())
    with budgetspan.run("r", max_cost_usd=0.12) as run, pytest.raises(budgetspan.BudgetExhausted):
        chat(azure(server), max_tokens=2000)
        azure(server).chat.completions.create(model=DEPLOYMENT, messages=[{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1 and run.usage.cost_usd < 0.12
