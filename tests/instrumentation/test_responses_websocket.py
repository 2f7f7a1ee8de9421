"""The ``openai`` SDK's own WebSocket mode for the Responses API (``client.responses.connect()``),
against a local Responses WebSocket server (review10). Not instrumented: a ``response.create``
frame sent on a connection is counted by no limit and its usage charged nowhere. The Agents SDK's
WebSocket transport, which does not go through this connection class, is budgeted
(``test_openai_agents.py``); this one is left, as a known gap, for a later change: events can be
read by ``recv``, ``recv_bytes`` + ``parse_event``, iteration or ``on`` handlers, and a
connection reconnects and queues frames by itself, so each path needs its own hook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

import budgetspan
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


@pytest.mark.xfail(
    strict=True,
    reason="openai's client.responses.connect() WebSocket mode is not instrumented: its "
    "response.create frames are counted by no limit (2 of 2 sent under max_model_calls=1)",
)
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
