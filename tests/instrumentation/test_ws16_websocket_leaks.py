"""ws16: the Responses API's WebSocket mode (``client.responses.connect()``) against a real local
WebSocket server: a connection garbage-collected without ``close`` and the SDK's own reconnect
left the responses sent on them waiting (the call's worst case held for the rest of the run, its
span never written). Now both end the waiting calls, charged their estimate and marked so."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from websockets.sync.server import ServerConnection, serve

import budgetspan
from budgetspan import attributes as A
from tests.instrumentation.responses_ws_server import ResponsesWebSocketServer, _response


@pytest.fixture
def ws_server() -> Iterator[ResponsesWebSocketServer]:
    with ResponsesWebSocketServer() as server:
        yield server


class DroppingServer:
    """Answers a ``response.create`` on its first connection with ``response.created`` only,
    then closes that connection with 1012 (service restart: the SDK reconnects); on later
    connections it answers in full, like ``ResponsesWebSocketServer``."""

    def __init__(self) -> None:
        self.connections = 0
        self.frames: list[dict[str, Any]] = []
        self._server = serve(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.socket.getsockname()[1]}/v1"

    def _serve(self, connection: ServerConnection) -> None:
        self.connections += 1
        first = self.connections == 1
        for message in connection:
            frame = json.loads(message)
            self.frames.append(frame)
            rid, model = f"resp_{len(self.frames)}", frame.get("model", "gpt-4o-mini")
            created = {"type": "response.created", "response": _response(rid, model, "in_progress", None)}
            connection.send(json.dumps({**created, "sequence_number": 0}))
            if first:
                connection.close(code=1012, reason="restart")
                return
            done = {"type": "response.completed", "response": _response(rid, model, "completed", "Hi.")}
            connection.send(json.dumps({**done, "sequence_number": 1}))

    def __enter__(self) -> DroppingServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()


def test_a_connection_collected_without_close_ends_its_waiting_call(
    instrumented: Any, ws_server: ResponsesWebSocketServer
) -> None:
    """Before: no span, the call's worst case held until the run ended. After: the call ends when
    the connection is collected, its usage estimated (never 0) and marked unreported."""
    client = openai.OpenAI(base_url=ws_server.url, api_key="k")
    with budgetspan.run("ws", max_model_calls=3, max_cost_usd=1.0) as run:
        manager = client.responses.connect()
        connection = manager.enter()
        connection.response.create(model="gpt-4o-mini", input="hi", max_output_tokens=1000)
        assert connection.recv().type == "response.created"
        socket = connection._connection  # the websocket under it, closed by the test below
        del connection, manager
        gc.collect()
        [span] = instrumented.spans("chat")
        assert span.attributes[A.STREAM_END] == "abandoned"
        assert span.attributes[A.USAGE_UNREPORTED] is True
        assert span.attributes[A.USAGE_ESTIMATED_INPUT] > 0
        assert run.usage.model_calls == 1 and run.usage.input_tokens > 0  # estimated, never 0
        assert run.usage.unreported_usage_calls == 1
        socket.close()


def test_a_reconnect_ends_the_call_sent_on_the_dropped_connection(instrumented: Any) -> None:
    """Before: the response lost with the dropped connection waited in the queue; the next
    response's events were read as its own (the lost one settled with the new one's usage, the new
    one never). After: the lost call ends at the reconnect (estimated, ``reconnected``), the next
    one is settled by its own ``response.completed``."""
    with DroppingServer() as server, budgetspan.run("ws", max_model_calls=3) as run:
        client = openai.OpenAI(base_url=server.url, api_key="k")
        sent_while_reconnecting: list[Any] = []

        def on_reconnecting(event: Any) -> None:
            # (sent while the SDK reconnects: queued, and sent on the new connection)
            sent_while_reconnecting[0].response.create(model="gpt-4o-mini", input="again")

        with client.responses.connect(on_reconnecting=on_reconnecting) as connection:
            sent_while_reconnecting.append(connection)
            connection.response.create(model="gpt-4o-mini", input="lost on the old connection")
            kinds = []
            for event in connection:
                kinds.append(event.type)
                if event.type == "response.completed":
                    break
            assert kinds == ["response.created", "response.created", "response.completed"]
            spans = instrumented.spans("chat")
            assert [s.attributes[A.STREAM_END] for s in spans] == ["reconnected", "consumed"]
        assert server.connections == 2
        assert spans[0].attributes[A.USAGE_UNREPORTED] is True
        assert spans[1].attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 40  # its own usage
        assert run.usage.model_calls == 2 and run.usage.unreported_usage_calls == 1


async def test_an_async_connection_collected_without_close_ends_its_waiting_call(
    instrumented: Any, ws_server: ResponsesWebSocketServer
) -> None:
    client = openai.AsyncOpenAI(base_url=ws_server.url, api_key="k")
    async with budgetspan.run("ws", max_model_calls=3) as run:
        manager = client.responses.connect()
        connection = await manager.enter()
        await connection.response.create(model="gpt-4o-mini", input="hi")
        assert (await connection.recv()).type == "response.created"
        socket = connection._connection
        del connection, manager
        gc.collect()
        [span] = instrumented.spans("chat")
        assert span.attributes[A.STREAM_END] == "abandoned"
        assert run.usage.model_calls == 1 and run.usage.unreported_usage_calls == 1
        await socket.close()


async def test_an_agents_sdk_websocket_request_cut_after_its_first_event_ends_estimated(
    tracing: Any,
) -> None:
    """The Agents SDK's websocket mode (``use_responses_websocket=True``): a connection dropped
    after ``response.created`` ends that request's call (error, estimated), not held for the run.
    (Already so: each request's events go through a stream proxy; kept as a guard.)"""
    from agents import Agent, OpenAIProvider, RunConfig, Runner
    from agents.tracing import set_trace_processors

    from budgetspan.instrumentation.openai import OpenAIInstrumentor
    from budgetspan.instrumentation.openai_agents import OpenAIAgentsInstrumentor
    from tests.conftest import instrumentors_on

    set_trace_processors([])
    with DroppingServer() as server, instrumentors_on(OpenAIInstrumentor(), OpenAIAgentsInstrumentor()):
        config = RunConfig(
            model_provider=OpenAIProvider(base_url=server.url, api_key="k", use_responses_websocket=True)
        )
        agent = Agent(name="brief", instructions="be brief", model="gpt-4o-mini")
        async with budgetspan.run("ws", max_model_calls=3) as run:
            with pytest.raises(Exception) as info:
                await Runner.run(agent, "weather?", run_config=config)
            assert not isinstance(info.value, budgetspan.BudgetExhausted)
            spans = tracing.spans("chat")
            assert spans and all(s.attributes[A.USAGE_UNREPORTED] is True for s in spans)
            assert run.usage.model_calls == len(spans) == run.usage.unreported_usage_calls
