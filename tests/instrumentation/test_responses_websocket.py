"""The ``openai`` SDK's own WebSocket mode for the Responses API (``client.responses.connect()``),
against a local Responses WebSocket server (review10): each ``response.create`` event is a model
call, reserved before it is sent and settled from ``response.completed`` (was: not instrumented,
2 of 2 sent under ``max_model_calls=1``, the run saw 0 calls and 0 tokens)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan import attributes as A
from tests.instrumentation.responses_ws_server import ResponsesWebSocketServer


@pytest.fixture
def ws_server() -> Iterator[ResponsesWebSocketServer]:
    with ResponsesWebSocketServer() as server:
        yield server


def ask(connection: Any, text: str) -> str:
    connection.response.create(model="gpt-4o-mini", input=text)
    for event in connection:
        if event.type == "response.completed":
            return str(event.response.output_text)
    raise AssertionError("no response.completed")


def test_the_raw_connection_reaches_the_server(
    instrumented: Any, ws_server: ResponsesWebSocketServer
) -> None:
    """The control: the SDK's connection talks to the stand-in server."""
    client = openai.OpenAI(base_url=ws_server.url, api_key="k")
    with client.responses.connect() as connection:
        assert ask(connection, "hi") == "Sunny."
    assert [f["type"] for f in ws_server.frames] == ["response.create"]


def test_a_raw_websocket_response_is_a_budgeted_model_call(
    instrumented: Any, ws_server: ResponsesWebSocketServer
) -> None:
    client = openai.OpenAI(base_url=ws_server.url, api_key="k")
    with budgetspan.run("ws", max_model_calls=1) as run, client.responses.connect() as connection:
        ask(connection, "hi")
        with pytest.raises(budgetspan.BudgetExhausted):
            ask(connection, "again")
    assert len(ws_server.frames) == 1
    assert run.usage.model_calls == 1 and run.usage.input_tokens == 40
    assert run.usage.cost_usd > 0  # priced: the provider is the client's (api.openai.com would be "openai")
    [span] = instrumented.spans("chat")
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 6


async def test_an_async_connection_and_a_frame_queued_before_it_connects(
    instrumented: Any, ws_server: ResponsesWebSocketServer
) -> None:
    client = openai.AsyncOpenAI(base_url=ws_server.url, api_key="k")
    async with budgetspan.run("ws", max_model_calls=1) as run:
        manager = client.responses.connect()
        manager.send(
            {"type": "response.create", "model": "gpt-4o-mini", "input": "queued"}
        )  # sent at connect
        with pytest.raises(budgetspan.BudgetExhausted):
            manager.send({"type": "response.create", "model": "gpt-4o-mini", "input": "one more"})
        async with manager as connection:
            async for event in connection:
                if event.type == "response.completed":
                    break
            with pytest.raises(budgetspan.BudgetExhausted):
                await connection.response.create(model="gpt-4o-mini", input="again")
    assert len(ws_server.frames) == 1
    assert run.usage.model_calls == 1 and run.usage.input_tokens == 40


def test_a_connection_closed_before_its_response_completed_ends_the_call(
    instrumented: Any, ws_server: ResponsesWebSocketServer
) -> None:
    """A response left unread when its connection closes: its call ends there (its span written,
    its reservation settled), not held for the rest of the run."""
    client = openai.OpenAI(base_url=ws_server.url, api_key="k")
    with budgetspan.run("ws", max_model_calls=2) as run:
        with client.responses.connect() as connection:
            connection.response.create(model="gpt-4o-mini", input="hi")
            assert connection.recv().type == "response.created"
        [span] = instrumented.spans("chat")
        assert span.attributes[A.STREAM_END] == "closed"
        assert run.usage.model_calls == 1 and run.usage.input_tokens > 0  # estimated, never 0


async def test_an_async_connection_closed_before_its_response_completed_ends_the_call(
    instrumented: Any, ws_server: ResponsesWebSocketServer
) -> None:
    client = openai.AsyncOpenAI(base_url=ws_server.url, api_key="k")
    async with budgetspan.run("ws", max_model_calls=2) as run:
        async with client.responses.connect() as connection:
            await connection.response.create(model="gpt-4o-mini", input="hi")
            assert (await connection.recv()).type == "response.created"
        [span] = instrumented.spans("chat")
        assert span.attributes[A.STREAM_END] == "closed"
        assert run.usage.model_calls == 1 and run.usage.input_tokens > 0
