"""ws16: built-in tool fees (OpenAI Responses API tools, Anthropic server tools) are counted in the
call's cost and held before the call; an unknown one is said, never $0.

The real openai and anthropic SDKs over the recording local transport (``tests.replay``). The
response bodies are SYNTHETIC: built by hand following the SDKs' types (``ResponseFunctionWebSearch``,
``ResponseCodeInterpreterToolCall``, ``ImageGenerationCall``, Anthropic's ``ServerToolUsage``,
``ServerToolUseBlock``, ``Container``); none is in /work/shared/fixtures/recorded.
"""

from __future__ import annotations

import logging
from typing import Any

import anthropic
import openai
import pytest

import budgetspan
from budgetspan import attributes as A
from budgetspan.instrumentation import tool_fees
from tests.replay import (
    Recorder,
    anthropic_events,
    anthropic_message,
    anthropic_sse,
    expected_cost,
    json_response,
    openai_client,
    openai_sse,
    sse_response,
)

USAGE = {
    "input_tokens": 100,
    "output_tokens": 20,
    "total_tokens": 120,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens_details": {"reasoning_tokens": 0},
}
TOKENS = expected_cost("openai", "gpt-4o-mini", 100, 20) or 0.0


def response(*items: dict[str, Any]) -> dict[str, Any]:
    """A Responses API ``Response`` with these output items before its message."""
    message = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Found it.", "annotations": []}],
    }
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-4o-mini",
        "status": "completed",
        "output": [*items, message],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": USAGE,
    }


def search(n: int) -> dict[str, Any]:
    return {
        "type": "web_search_call",
        "id": f"ws_{n}",
        "status": "completed",
        "action": {"type": "search", "query": "weather"},
    }


@pytest.fixture(autouse=True)
def fresh_containers() -> None:
    tool_fees._charged_containers.clear()
    tool_fees._warned.clear()


def test_openai_web_searches_are_counted_in_the_cost(instrumented: Any) -> None:
    """Before: $0 for the searches (the cost was the tokens' alone). After: $0.01 each."""
    rec = Recorder(json_response(response(search(1), search(2))))
    with budgetspan.run("fees", max_cost_usd=1.0) as run:
        openai_client(rec).responses.create(
            model="gpt-4o-mini", input="weather?", tools=[{"type": "web_search"}]
        )
    span = instrumented.only("chat")
    assert span.attributes[A.GEN_AI_USAGE_COST] == pytest.approx(TOKENS + 0.02)
    assert span.attributes[A.TOOL_FEES_USD] == pytest.approx(0.02)
    assert list(span.attributes[A.TOOL_FEES_USES]) == ["web_search=2"]
    assert run.usage.cost_usd == pytest.approx(TOKENS + 0.02)


def test_openai_search_worst_case_is_held_before_the_call(instrumented: Any) -> None:
    """``max_tool_calls=3`` bounds the searches: $0.03 held; a run with $0.02 left sends nothing."""
    rec = Recorder(json_response(response(search(1))))
    with budgetspan.run("fees", max_cost_usd=0.02):
        with pytest.raises(budgetspan.BudgetExhausted):
            openai_client(rec).responses.create(
                model="gpt-4o-mini",
                input="weather?",
                tools=[{"type": "web_search"}],
                max_tool_calls=3,
                max_output_tokens=100,
            )
    assert rec.requests == []
    with budgetspan.run("fees", max_cost_usd=1.0):
        openai_client(rec).responses.create(
            model="gpt-4o-mini",
            input="weather?",
            tools=[{"type": "web_search_preview"}],
            max_output_tokens=100,
        )
    span = instrumented.only("chat")
    assert span.attributes[A.TOOL_FEES_WORST_CASE] == pytest.approx(0.025)  # one preview search
    assert span.attributes[A.WORST_CASE_COST] > 0.025
    assert span.attributes[A.TOOL_FEES_USD] == pytest.approx(0.025)  # the preview tool's fee


def test_openai_containers_and_images(instrumented: Any) -> None:
    """A code interpreter container is charged once (by its id, across calls); an image by its
    quality and size; a file search at $2.50 / 1k."""
    code = {
        "type": "code_interpreter_call",
        "id": "ci_1",
        "code": "print(1)",
        "container_id": "cntr_1",
        "outputs": None,
        "status": "completed",
    }
    image = {
        "type": "image_generation_call",
        "id": "ig_1",
        "status": "completed",
        "result": "aGk=",
        "quality": "medium",
        "size": "1024x1024",
    }
    files = {"type": "file_search_call", "id": "fs_1", "queries": ["q"], "status": "completed"}
    rec = Recorder(
        json_response(response(code, image, files)), json_response(response({**code, "id": "ci_2"}))
    )
    tools = [
        {"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}},
        {"type": "image_generation"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
    ]
    with budgetspan.run("fees", max_cost_usd=5.0) as run:
        client = openai_client(rec)
        client.responses.create(model="gpt-4o-mini", input="plot", tools=tools)
        client.responses.create(model="gpt-4o-mini", input="again", tools=tools)
    first, second = instrumented.spans("chat")
    assert first.attributes[A.TOOL_FEES_USD] == pytest.approx(0.12 + 0.042 + 0.0025)
    assert A.TOOL_FEES_USD not in second.attributes  # the same container: charged once
    assert run.usage.cost_usd == pytest.approx(2 * TOKENS + 0.12 + 0.042 + 0.0025)


def test_an_unknown_built_in_tool_is_said_once_never_zero_silently(
    instrumented: Any, caplog: pytest.LogCaptureFixture
) -> None:
    item = {"type": "satellite_imagery_call", "id": "si_1", "status": "completed"}
    rec = Recorder(json_response(response(item)))
    with caplog.at_level(logging.WARNING, logger="budgetspan"), budgetspan.run("fees", max_cost_usd=1.0):
        client = openai_client(rec)
        for _ in range(2):
            client.responses.create(model="gpt-4o-mini", input="x", tools=[{"type": "satellite_imagery"}])
    for span in instrumented.spans("chat"):
        assert list(span.attributes[A.TOOL_FEES_UNPRICED]) == ["satellite_imagery", "satellite_imagery_call"]
    warned = [r for r in caplog.records if "no known per-use price" in r.getMessage()]
    assert len(warned) == 2  # once per tool type, not per call


# --- Anthropic --------------------------------------------------------------------------------

ARGS: dict[str, Any] = {
    "model": "claude-3-haiku-20240307",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "news?"}],
}
SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}


def claude(rec: Recorder) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="test", http_client=rec.sync(), max_retries=0)


def test_anthropic_web_search_requests_are_counted_and_held(instrumented: Any) -> None:
    """``usage.server_tool_use.web_search_requests=3``: $0.03 more; ``max_uses=5``: $0.05 held."""
    usage = {"input_tokens": 10, "output_tokens": 5, "server_tool_use": {"web_search_requests": 3}}
    body = anthropic_message(usage=usage)
    body["content"] = [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "news"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        *body["content"],
    ]
    rec = Recorder(json_response(body))
    with budgetspan.run("fees", max_cost_usd=1.0) as run:
        claude(rec).messages.create(**ARGS, tools=[SEARCH_TOOL])
    tokens = expected_cost("anthropic", "claude-3-haiku-20240307", 10, 5) or 0.0
    span = instrumented.only("chat")
    assert span.attributes[A.GEN_AI_USAGE_COST] == pytest.approx(tokens + 0.03)
    assert span.attributes[A.TOOL_FEES_WORST_CASE] == pytest.approx(0.05)
    assert run.usage.cost_usd == pytest.approx(tokens + 0.03)
    with budgetspan.run("fees", max_cost_usd=0.04), pytest.raises(budgetspan.BudgetExhausted):
        claude(rec).messages.create(**ARGS, tools=[SEARCH_TOOL])  # $0.05 of searches may not fit
    assert len(rec.requests) == 1


def test_anthropic_stream_counts_cumulative_searches_once(instrumented: Any) -> None:
    """``message_delta`` restates the cumulative count: 2 searches are $0.02, not $0.04."""
    events = anthropic_events(
        delta_usage={"output_tokens": 7, "server_tool_use": {"web_search_requests": 2}},
    )
    events.insert(
        -1, {**events[-2], "usage": {"output_tokens": 7, "server_tool_use": {"web_search_requests": 2}}}
    )
    rec = Recorder(sse_response(anthropic_sse(events)))
    with budgetspan.run("fees", max_cost_usd=1.0) as run:
        with claude(rec).messages.stream(**ARGS, tools=[SEARCH_TOOL]) as stream:
            "".join(stream.text_stream)
    tokens = expected_cost("anthropic", "claude-3-haiku-20240307", 12, 7) or 0.0
    assert instrumented.only("chat").attributes[A.TOOL_FEES_USD] == pytest.approx(0.02)
    assert run.usage.cost_usd == pytest.approx(tokens + 0.02)


def test_anthropic_code_execution_is_an_estimated_container_fee(instrumented: Any) -> None:
    body = anthropic_message()
    body["content"] = [
        {
            "type": "server_tool_use",
            "id": "srvtoolu_2",
            "name": "bash_code_execution",
            "input": {"command": "ls"},
        },
        *body["content"],
    ]
    body["container"] = {"id": "container_1", "expires_at": "2026-12-06T13:00:00Z"}
    rec = Recorder(json_response(body))
    with budgetspan.run("fees", max_cost_usd=1.0):
        claude(rec).messages.create(
            **ARGS, tools=[{"type": "code_execution_20250825", "name": "code_execution"}]
        )
    span = instrumented.only("chat")
    assert span.attributes[A.TOOL_FEES_USD] == pytest.approx(0.05 * 5 / 60)
    assert span.attributes[A.TOOL_FEES_ESTIMATED] is True


def test_openai_stream_counts_the_searches_of_its_completed_response(instrumented: Any) -> None:
    done = response(search(1))
    events = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**done, "status": "in_progress", "output": []},
        },
        {"type": "response.completed", "sequence_number": 1, "response": done},
    ]
    rec = Recorder(sse_response(openai_sse(events, done=False)))
    with budgetspan.run("fees", max_cost_usd=1.0) as run:
        stream = openai_client(rec).responses.create(
            model="gpt-4o-mini", input="weather?", tools=[{"type": "web_search"}], stream=True
        )
        assert [e.type for e in stream] == ["response.created", "response.completed"]
    assert instrumented.only("chat").attributes[A.TOOL_FEES_USD] == pytest.approx(0.01)
    assert run.usage.cost_usd == pytest.approx(TOKENS + 0.01)


def test_anthropic_search_blocks_count_where_usage_does_not_say(instrumented: Any) -> None:
    """An answer whose usage has no ``server_tool_use``: its 2 search blocks are 2 searches."""
    body = anthropic_message()
    body["content"] = [
        *(
            {"type": "server_tool_use", "id": f"srvtoolu_{n}", "name": "web_search", "input": {"query": "q"}}
            for n in range(2)
        ),
        *body["content"],
    ]
    rec = Recorder(json_response(body))
    with budgetspan.run("fees", max_cost_usd=1.0):
        claude(rec).messages.create(**ARGS, tools=[SEARCH_TOOL])
    assert instrumented.only("chat").attributes[A.TOOL_FEES_USD] == pytest.approx(0.02)


def test_openai_hosted_shell_in_a_container_is_said_unpriced(instrumented: Any) -> None:
    rec = Recorder(json_response(response()))
    with budgetspan.run("fees", max_cost_usd=1.0) as run:
        openai_client(rec).responses.create(
            model="gpt-4o-mini",
            input="ls",
            tools=[{"type": "shell", "environment": {"type": "container_auto"}}],
        )
    assert list(instrumented.only("chat").attributes[A.TOOL_FEES_UNPRICED]) == ["shell (container_auto)"]
    assert run.usage.unpriced_calls == 1  # counted as the run's unpriced calls, not as $0 in silence


# --- over a real local HTTP server (tests/instrumentation/local_server.py) ----------------------


def test_over_http_openai_searches_and_anthropic_searches_are_counted(instrumented: Any, server: Any) -> None:
    """The same through a real socket: an OpenAI-compatible address (a gateway in front of OpenAI:
    OpenAI's fees) and Anthropic's SDK pointed at the local server."""
    from tests.instrumentation.local_server import json_answer

    usage = {"input_tokens": 10, "output_tokens": 5, "server_tool_use": {"web_search_requests": 1}}
    server.reset(json_answer(response(search(1), search(2))), json_answer(anthropic_message(usage=usage)))
    with budgetspan.run("fees", max_cost_usd=1.0) as run:
        oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
        oai.responses.create(model="gpt-4o-mini", input="weather?", tools=[{"type": "web_search"}])
        ant = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0)
        ant.messages.create(**ARGS, tools=[SEARCH_TOOL])
    first, second = instrumented.spans("chat")
    assert first.attributes[A.GEN_AI_PROVIDER_NAME] == "openai_compatible"
    assert first.attributes[A.TOOL_FEES_USD] == pytest.approx(0.02)
    assert second.attributes[A.TOOL_FEES_USD] == pytest.approx(0.01)
    fees_in_cost = first.attributes[A.GEN_AI_USAGE_COST] + second.attributes[A.GEN_AI_USAGE_COST]
    assert run.usage.cost_usd == pytest.approx(fees_in_cost) and fees_in_cost > 0.03
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "usage",
    [
        {"server_tool_use": "three"},
        {"server_tool_use": {"web_search_requests": -3}},
        {"server_tool_use": {"web_search_requests": "3"}},
        {"server_tool_use": {"web_search_requests": True}},
        {"server_tool_use": [1, 2]},
        {"server_tool_use": {7: 3}},
    ],
)
def test_malformed_tool_counts_are_unreported_never_an_error(usage: dict[str, Any]) -> None:
    plan = tool_fees.FeePlan("anthropic")
    tool_fees.anthropic_usage(plan, usage)
    tool_fees.openai_response(plan, {"output": 5})
    tool_fees.anthropic_block(plan, {"type": "server_tool_use", "name": ["web_search"]})
    assert plan.usd == 0.0 and not plan.uses


def test_a_callers_tools_iterator_is_never_consumed() -> None:
    tools = iter([{"type": "web_search"}])
    attributes: dict[str, Any] = {}
    tool_fees.openai_plan("openai", {"tools": tools}, attributes)
    assert next(tools) == {"type": "web_search"}


def test_a_chat_search_model_call_counts_its_search(instrumented: Any) -> None:
    """Chat Completions with ``web_search_options`` (a search model searches before each answer):
    one search at the preview rate, held before and counted in the cost, marked estimated."""
    body = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-search-preview",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Sunny."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }
    rec = Recorder(json_response(body))
    with budgetspan.run("fees", max_cost_usd=1.0) as run:
        openai_client(rec).chat.completions.create(
            model="gpt-4o-mini-search-preview",
            messages=[{"role": "user", "content": "weather?"}],
            web_search_options={},
        )
    tokens = expected_cost("openai", "gpt-4o-mini-search-preview", 100, 20) or 0.0
    span = instrumented.only("chat")
    assert span.attributes[A.TOOL_FEES_WORST_CASE] == pytest.approx(0.025)
    assert span.attributes[A.TOOL_FEES_ESTIMATED] is True
    assert span.attributes[A.GEN_AI_USAGE_COST] == pytest.approx(tokens + 0.025)
    assert run.usage.cost_usd == pytest.approx(tokens + 0.025)


@pytest.fixture
def refuse_unpriced(monkeypatch: pytest.MonkeyPatch) -> Any:
    from budgetspan import config as bs_config

    monkeypatch.setenv(A.ENV_UNPRICED, "refuse")
    bs_config.set_config(None)
    yield
    monkeypatch.delenv(A.ENV_UNPRICED)
    bs_config.set_config(None)


def test_refuse_stops_a_call_with_an_unknown_built_in_tool_before_it_is_sent(
    instrumented: Any, refuse_unpriced: Any
) -> None:
    """``BUDGETSPAN_UNPRICED=refuse`` under a dollar limit: a request whose built-in tool has no
    known fee is refused before it leaves (was: sent, and counted unpriced after)."""
    rec = Recorder(json_response(response()))
    with budgetspan.run("fees", max_cost_usd=1.0, suppress_exhausted=True) as run:
        openai_client(rec).responses.create(
            model="gpt-4o-mini", input="x", tools=[{"type": "satellite_imagery"}]
        )
    assert rec.requests == [] and run.exhausted is not None
    assert run.exhausted.reason == "unpriced_model" and "'satellite_imagery'" in (
        run.exhausted.explanation or ""
    )
    server_tool = {"type": "satellite_20260101", "name": "satellite"}
    with budgetspan.run("fees", max_cost_usd=1.0, suppress_exhausted=True) as run:
        claude(rec).messages.create(**ARGS, tools=[server_tool])
    assert rec.requests == [] and run.exhausted is not None and run.exhausted.reason == "unpriced_model"
    # known fees, or no dollar limit: sent
    with budgetspan.run("fees", max_cost_usd=1.0) as run:
        openai_client(rec).responses.create(model="gpt-4o-mini", input="x", tools=[{"type": "web_search"}])
    with budgetspan.run("fees", max_model_calls=5) as run:
        openai_client(rec).responses.create(
            model="gpt-4o-mini", input="x", tools=[{"type": "satellite_imagery"}]
        )
    assert len(rec.requests) == 2
