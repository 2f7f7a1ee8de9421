"""OpenAI Agents SDK (``openai-agents``): tools counted and refused before their body, agent spans
and handoffs, refusals that reach the caller as ``BudgetExhausted``, one chat span per request.

Everything runs through the real SDK and the real ``openai`` client against the session's scripted
server (``tools-N`` models call a tool N turns in a row), over the Responses API (the SDK's
default) and Chat Completions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
)
from agents.retry import ModelRetrySettings
from agents.tracing import set_trace_processors
from opentelemetry.trace import StatusCode

import budgetspan
from budgetspan import attributes as A
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from budgetspan.instrumentation.openai_agents import OpenAIAgentsInstrumentor
from tests.conftest import Tracing, instrumentors_on
from tests.instrumentation import zero_code
from tests.instrumentation.agent_server import AgentServer, Request

APIS = ["responses", "chat_completions"]


@pytest.fixture
def agents_on(tracing: Tracing) -> Iterator[Tracing]:
    """budgetspan's OpenAI and Agents SDK instrumentors; the SDK's own tracing on, exporting
    nowhere (its default exporter would send traces to OpenAI)."""
    set_trace_processors([])
    with instrumentors_on(OpenAIInstrumentor(), OpenAIAgentsInstrumentor()):
        yield tracing


class Bodies:
    """Tools whose bodies record that they ran. Python names differ from the tools' names: the
    spans and budgets must use the name the model sees."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        @function_tool(name_override="lookup")
        def look_up_city(city: str) -> str:
            """Look a city up."""
            self.ran.append(city)
            return f"sunny in {city}"

        self.lookup = look_up_city


def weather_agent(
    server: AgentServer, api: str = "responses", script: str = "tools-3"
) -> tuple[Bodies, Agent[Any]]:
    """The agent ``weather`` with a lookup tool whose runs ``Bodies`` records, answering by ``script``."""
    bodies = Bodies()
    return bodies, Agent(name="weather", tools=[bodies.lookup], model=model(server, api, script))


def model(server: AgentServer, api: str, name: str) -> Any:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    if api == "responses":
        return OpenAIResponsesModel(model=name, openai_client=client)
    return OpenAIChatCompletionsModel(model=name, openai_client=client)


@dataclass
class Weather:
    """The agent ``weather`` over one of the APIS (three turns of lookup calls scripted), whose
    tool runs ``bodies`` records; ``sent()``: the requests the server had since the test began."""

    bodies: Bodies
    agent: Agent[Any]
    server: AgentServer
    mark: int

    def sent(self) -> list[Request]:
        return self.server.since(self.mark)


@pytest.fixture(params=APIS)
def weather(request: pytest.FixtureRequest, agents_on: Tracing, agent_server: AgentServer) -> Weather:
    bodies, agent = weather_agent(agent_server, request.param)
    return Weather(bodies, agent, agent_server, agent_server.mark())


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def _own(tracing: Tracing, prefix: str) -> list[Any]:
    return [s for s in tracing.spans(prefix) if s.instrumentation_scope.name == A.INSTRUMENTATION_SCOPE]


async def test_one_tool_call_allowed_lets_exactly_one_body_run(agents_on: Tracing, weather: Weather) -> None:
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        async with budgetspan.run("one tool", max_tool_calls=1) as run:
            await Runner.run(weather.agent, "weather?")
    e = info.value
    assert weather.bodies.ran == ["x1"]  # the second and third rounds were refused before the body ran
    assert [r.answer for r in weather.sent()] == ["tool:lookup", "tool:lookup"]
    assert e.reason == "max_tool_calls" and e is run.exhausted
    assert e.partial["tool_results"] == [{"tool": "lookup", "result": "sunny in x1"}]
    assert (run.usage.tool_calls, run.usage.tools_finished) == (1, 1)
    (tool,) = _own(agents_on, "execute_tool")
    assert tool.name == "execute_tool lookup"
    assert _attrs(tool)[A.GEN_AI_TOOL_NAME] == "lookup"
    assert _attrs(tool)[A.TOOL_SYSTEM] == "openai_agents"
    (agent_span,) = _own(agents_on, "invoke_agent weather")
    assert tool.parent.span_id == agent_span.context.span_id
    assert agent_span.status.status_code is StatusCode.UNSET  # a refusal is no failure of the agent
    (run_span,) = agents_on.spans("invoke_agent one tool")
    assert _attrs(run_span)[A.EXHAUSTED_EXPLANATION] == e.explanation


async def test_max_model_calls_sends_exactly_that_many_requests(agents_on: Tracing, weather: Weather) -> None:
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        async with budgetspan.run("two calls", max_model_calls=2) as run:
            await Runner.run(weather.agent, "weather?")
    assert len(weather.sent()) == 2
    assert info.value.reason == "max_model_calls" and run.usage.model_calls == 2
    assert weather.bodies.ran == ["x1", "x2"]
    assert [r["tool"] for r in info.value.partial["tool_results"]] == ["lookup", "lookup"]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("streamed", [False, True])
async def test_each_request_is_one_chat_span_with_the_servers_token_counts(
    agents_on: Tracing, agent_server: AgentServer, api: str, streamed: bool
) -> None:
    _, agent = weather_agent(agent_server, api)
    mark = agent_server.mark()
    async with budgetspan.run("tokens") as run:
        if streamed:
            result = Runner.run_streamed(agent, "weather?")
            async for _ in result.stream_events():
                pass
        else:
            result = await Runner.run(agent, "weather?")
    assert result.final_output == "Final answer after 3 tool results: sunny in x3"
    sent = agent_server.since(mark)
    assert len(sent) == 4 and all(r.stream is streamed for r in sent)
    chats = sorted(_own(agents_on, "chat"), key=lambda s: s.start_time)
    assert [
        (_attrs(s)[A.GEN_AI_USAGE_INPUT_TOKENS], _attrs(s)[A.GEN_AI_USAGE_OUTPUT_TOKENS]) for s in chats
    ] == [(r.input_tokens, r.output_tokens) for r in sent]
    u = run.usage
    assert (u.model_calls, u.tool_calls, u.tools_finished) == (4, 3, 3)
    assert u.input_tokens == sum(r.input_tokens for r in sent)
    (agent_span,) = _own(agents_on, "invoke_agent weather")
    assert _attrs(agent_span)[A.AGENT_FRAMEWORK] == "openai_agents"
    tools = _own(agents_on, "execute_tool")
    assert len(tools) == 3
    assert {s.parent.span_id for s in chats + tools} == {agent_span.context.span_id}


def test_a_refused_tool_raises_budget_exhausted_from_run_sync(
    agents_on: Tracing, agent_server: AgentServer
) -> None:
    bodies, agent = weather_agent(agent_server)
    with pytest.raises(budgetspan.BudgetExhausted) as info:  # not the SDK's UserError
        with budgetspan.run("sync", max_tool_calls=1):
            Runner.run_sync(agent, "weather?")
    assert bodies.ran == ["x1"] and info.value.partial["tool_results"]


@pytest.mark.parametrize("api", APIS)
async def test_a_refused_tool_raises_budget_exhausted_from_a_streamed_run(
    agents_on: Tracing, agent_server: AgentServer, api: str
) -> None:
    bodies, agent = weather_agent(agent_server, api)
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        async with budgetspan.run("streamed", max_tool_calls=1) as run:
            result = Runner.run_streamed(agent, "weather?")
            async for _ in result.stream_events():
                pass
    assert bodies.ran == ["x1"] and info.value is run.exhausted


@pytest.mark.parametrize("own_formatter", [False, True])
async def test_a_refusal_inside_a_tool_body_is_not_made_a_message_for_the_model(
    agents_on: Tracing, agent_server: AgentServer, own_formatter: bool
) -> None:
    """The body's own model call is refused: neither the SDK's default failure_error_function
    nor the tool's own turns that into a tool result the run would carry on with."""
    sync_client = openai.OpenAI(base_url=agent_server.base_url, api_key="test", max_retries=0)
    asked: list[Exception] = []

    def formatter(ctx: Any, error: Exception) -> str:
        asked.append(error)
        return "the tool failed"

    def summarise(city: str) -> str:
        """Summarise a city with a model call of its own."""
        answer = sync_client.chat.completions.create(
            model="plain", messages=[{"role": "user", "content": city}]
        )
        return str(answer.choices[0].message.content)

    tool = (
        function_tool(summarise, failure_error_function=formatter)
        if own_formatter
        else function_tool(summarise)
    )
    agent = Agent(name="summary", tools=[tool], model=model(agent_server, "responses", "tools-1"))
    mark = agent_server.mark()
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        async with budgetspan.run("inner refusal", max_model_calls=1) as run:
            await Runner.run(agent, "Paris")
    assert info.value.reason == "max_model_calls" and info.value is run.exhausted
    assert len(agent_server.since(mark)) == 1 and asked == []
    assert info.value.partial["tool_results"] == []  # the tool did not finish
    (span,) = _own(agents_on, "execute_tool summarise")
    assert _attrs(span)[A.ERROR_TYPE] == "BudgetExhausted"


async def test_a_failed_body_answered_by_the_sdk_is_an_error_not_a_result(
    agents_on: Tracing, agent_server: AgentServer
) -> None:
    @function_tool
    def broken(city: str) -> str:
        """Always fails."""
        raise ValueError("no such city")

    agent = Agent(name="weather", tools=[broken], model=model(agent_server, "responses", "tools-1"))
    async with budgetspan.run("broken tool") as run:
        result = await Runner.run(agent, "weather?")
    assert "An error occurred while running the tool" in result.final_output  # the SDK's message
    (span,) = _own(agents_on, "execute_tool broken")
    assert span.status.status_code is StatusCode.ERROR
    assert run.partial["tool_results"] == [] and run.usage.tools_finished == 0


async def test_a_refused_model_call_is_not_retried_whatever_the_policy(
    agents_on: Tracing, agent_server: AgentServer
) -> None:
    asked: list[Any] = []

    def retry_everything(context: Any) -> bool:
        asked.append(context.error)
        return True

    bodies = Bodies()
    settings = ModelSettings(retry=ModelRetrySettings(max_retries=3, policy=retry_everything))
    agent = Agent(
        name="weather",
        tools=[bodies.lookup],
        model=model(agent_server, "responses", "tools-3"),
        model_settings=settings,
    )
    with pytest.raises(budgetspan.BudgetExhausted):
        async with budgetspan.run("no retry", max_model_calls=1):
            await Runner.run(agent, "weather?")
    assert asked == []


@pytest.mark.parametrize("tracing_disabled", [False, True])
async def test_each_agent_is_a_span_and_a_handoff_is_an_event(
    agents_on: Tracing, agent_server: AgentServer, tracing_disabled: bool
) -> None:
    bodies = Bodies()
    weather = Agent(name="weather", tools=[bodies.lookup], model=model(agent_server, "responses", "tools-1"))
    triage = Agent(name="triage", handoffs=[weather], model=model(agent_server, "responses", "tools-0"))
    async with budgetspan.run("handoff") as run:
        await Runner.run(triage, "weather?", run_config=RunConfig(tracing_disabled=tracing_disabled))
    (first,) = _own(agents_on, "invoke_agent triage")
    (second,) = _own(agents_on, "invoke_agent weather")
    assert first.parent.span_id == second.parent.span_id == run.span.get_span_context().span_id
    (event,) = first.events
    assert event.name == A.EVENT_HANDOFF
    assert dict(event.attributes or {}) == {A.HANDOFF_FROM: "triage", A.HANDOFF_TO: "weather"}
    (tool,) = _own(agents_on, "execute_tool lookup")
    assert tool.parent.span_id == second.context.span_id
    assert (run.usage.model_calls, run.usage.tool_calls) == (3, 1)  # the handoff is not a tool call


ZERO_CODE = r"""
import asyncio, json, os
import budgetspan, openai
from agents import Agent, OpenAIResponsesModel, Runner, function_tool
from agents.tracing import set_trace_processors

set_trace_processors([])
ran = []

@function_tool(name_override="lookup")
def look_up(city: str) -> str:
    ran.append(city)
    return "sunny in " + city

client = openai.AsyncOpenAI(base_url=os.environ["AGENT_SERVER_URL"], api_key="test", max_retries=0)
agent = Agent(name="weather", tools=[look_up], model=OpenAIResponsesModel(model="tools-5", openai_client=client))
"""


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_zero_code_refuses_the_call_after_the_limit(agent_server: AgentServer, tmp_path: Path) -> None:
    zero_code.check_agent_stopped_at_two_model_calls(
        agent_server, tmp_path, ZERO_CODE, 'asyncio.run(Runner.run(agent, "weather?"))', "openai_agents"
    )


async def test_a_tool_past_its_own_cap_is_a_tool_error_for_the_model(
    agents_on: Tracing, agent_server: AgentServer
) -> None:
    """ToolRefused (the tool's max_calls) goes to the SDK's failure_error_function: the model
    reads it as the tool's error, and the run goes on to its answer."""
    bodies, agent = weather_agent(agent_server, "responses", "tools-2")
    async with budgetspan.run("capped", tools={"lookup": {"max_calls": 1}}) as run:
        result = await Runner.run(agent, "weather?")
    assert bodies.ran == ["x1"] and run.usage.tool_calls == 1
    assert run.outcome is budgetspan.Outcome.SUCCESS and run.exhausted is None
    outputs = [
        i for i in result.to_input_list() if isinstance(i, dict) and i.get("type") == "function_call_output"
    ]
    assert len(outputs) == 2 and "error occurred while running the tool" in str(outputs[1]["output"])


# --- the Responses API over a WebSocket (review10) -----------------------------------------------
# ``OpenAIProvider(use_responses_websocket=True)`` sends each request as a ``response.create``
# frame on a WebSocket, not through ``client.responses.create``: was 3 of 3 sent under
# ``max_model_calls=1``, the run saw 0 model calls and 0 tokens.


@pytest.fixture
def ws_server() -> Iterator[Any]:
    from tests.instrumentation.responses_ws_server import ResponsesWebSocketServer

    with ResponsesWebSocketServer() as server:
        yield server


def ws_run_config(server: Any) -> RunConfig:
    from agents import OpenAIProvider

    return RunConfig(
        model_provider=OpenAIProvider(base_url=server.url, api_key="k", use_responses_websocket=True)
    )


async def test_websocket_requests_are_budgeted_model_calls(agents_on: Tracing, ws_server: Any) -> None:
    from tests.instrumentation.responses_ws_server import USAGE

    agent = Agent(name="brief", instructions="be brief", model="gpt-4o-mini")
    config = ws_run_config(ws_server)
    async with budgetspan.run("ws", max_model_calls=2) as run:
        for _ in range(2):
            assert (await Runner.run(agent, "weather?", run_config=config)).final_output == "Sunny."
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            await Runner.run(agent, "again?", run_config=config)
    assert info.value.reason == "max_model_calls"
    assert [f["type"] for f in ws_server.frames] == ["response.create"] * 2  # the third never sent
    assert (run.usage.model_calls, run.usage.input_tokens, run.usage.output_tokens) == (
        2,
        2 * USAGE["input_tokens"],
        2 * USAGE["output_tokens"],
    )
    spans = agents_on.spans("chat")
    assert len(spans) == 2 and spans[0].attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == USAGE["input_tokens"]
    assert run.usage.cost_usd > 0


async def test_a_streamed_websocket_run_is_counted_too(agents_on: Tracing, ws_server: Any) -> None:
    agent = Agent(name="brief", instructions="be brief", model="gpt-4o-mini")
    async with budgetspan.run("ws") as run:
        result = Runner.run_streamed(agent, "weather?", run_config=ws_run_config(ws_server))
        [event async for event in result.stream_events()]
    assert result.final_output == "Sunny."
    assert run.usage.model_calls == 1 and run.usage.output_tokens == 6
    [span] = agents_on.spans("chat")
    assert span.attributes[A.STREAM_END] == "consumed"
