"""Chained Responses API calls against a local server (review10): ``previous_response_id`` and
``conversation`` make the server prepend an earlier exchange the request does not show, billed
as input. A budget's worst case must count it, or a long conversation slips past ``max_cost_usd``
one small-looking request at a time (was: $0.50 spent under $0.30, the second call's worst case
priced from its 2-word input)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

import budgetspan
from budgetspan import attributes as A
from budgetspan.accounting.pricing import default_resolver
from tests.instrumentation.local_server import LocalServer, json_answer

MODEL = "gpt-4o"
CONTEXT = 100_000  # the first exchange: a long document, as the server counted it


def response(rid: str, input_tokens: int, output_tokens: int = 50, conversation: str | None = None) -> Any:
    body: dict[str, Any] = {
        "id": rid,
        "object": "response",
        "created_at": 1,
        "model": MODEL,
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": f"msg_{rid}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "summary", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
    if conversation is not None:
        body["conversation"] = {"id": conversation}
    return json_answer(body)


def client(server: LocalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)


def cost(input_tokens: int, output_tokens: int) -> float:
    found = default_resolver().cost("openai", MODEL, input_tokens, output_tokens, 0)
    assert found is not None
    return found


def test_a_chained_call_holds_the_context_it_carries(instrumented: Any, server: LocalServer) -> None:
    server.reset(response("resp_1", CONTEXT), response("resp_2", CONTEXT + 60))
    assert cost(CONTEXT, 50) < 0.30 < 2 * cost(CONTEXT, 50)  # one exchange fits, two do not
    with budgetspan.run("r", max_cost_usd=0.30) as run, pytest.raises(budgetspan.BudgetExhausted) as info:
        client(server).responses.create(model=MODEL, input="the document", max_output_tokens=100)
        client(server).responses.create(
            model=MODEL, previous_response_id="resp_1", input="once more", max_output_tokens=100
        )
    assert info.value.reason == "max_cost_usd"
    assert len(server.requests) == 1  # the chained call was refused before it was sent
    assert run.usage.cost_usd <= 0.30


def test_a_conversation_holds_the_context_it_carries(instrumented: Any, server: LocalServer) -> None:
    server.reset(response("resp_1", CONTEXT, conversation="conv_1"))
    with budgetspan.run("r", max_cost_usd=0.30), pytest.raises(budgetspan.BudgetExhausted):
        client(server).responses.create(
            model=MODEL, input="the document", conversation="conv_1", max_output_tokens=100
        )
        client(server).responses.create(
            model=MODEL, input="again", conversation={"id": "conv_1"}, max_output_tokens=100
        )
    assert len(server.requests) == 1


async def test_a_chained_call_within_the_budget_goes_and_says_its_worst_case(
    instrumented: Any, server: LocalServer
) -> None:
    """The control: with room for both, both are sent; the second's worst case counts the context."""
    server.reset(response("resp_a", CONTEXT), response("resp_b", CONTEXT + 60))
    api = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
    async with budgetspan.run("r", max_cost_usd=1.0) as run:
        await api.responses.create(model=MODEL, input="the document", max_output_tokens=100)
        await api.responses.create(
            model=MODEL, previous_response_id="resp_a", input="again", max_output_tokens=100
        )
        await api.responses.create(
            model=MODEL, previous_response_id="resp_unseen", input="x", max_output_tokens=100
        )
    assert len(server.requests) == 3
    _first, second, unseen = instrumented.spans("chat")
    assert second.attributes[A.WORST_CASE_COST] >= cost(CONTEXT + 50, 100)
    assert unseen.attributes[A.WORST_CASE_COST] < cost(1_000, 100)  # unknown context adds nothing
    assert run.usage.input_tokens == CONTEXT + 2 * (CONTEXT + 60)


# --- background responses -------------------------------------------------------------------
# ``background=True`` answers at once with a queued response and no usage; the server goes on
# generating, billed, after the call returned. Its output is unknown, never zero: charged its
# worst case (was: the input estimate only, ~$0 for a call that may write 16k tokens).


def queued(rid: str) -> Any:
    return json_answer(
        {
            "id": rid,
            "object": "response",
            "created_at": 1,
            "model": MODEL,
            "status": "queued",
            "background": True,
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": None,
        }
    )


def test_a_background_response_is_charged_its_worst_case(instrumented: Any, server: LocalServer) -> None:
    server.reset(queued("resp_q1"), queued("resp_q2"))
    worst = cost(0, 20_000)  # (and the input estimate)
    with budgetspan.run("r", max_cost_usd=1.5 * worst) as run, pytest.raises(budgetspan.BudgetExhausted):
        for _ in range(2):
            client(server).responses.create(
                model=MODEL, input="research this", background=True, max_output_tokens=20_000
            )
    assert len(server.requests) == 1  # the second could spend as much again: refused
    assert run.usage.output_tokens == 20_000 and run.usage.unreported_usage_calls == 1
    assert run.usage.cost_usd >= worst
    [span] = instrumented.spans("chat")
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert span.attributes[A.USAGE_ESTIMATED_OUTPUT] == 20_000
