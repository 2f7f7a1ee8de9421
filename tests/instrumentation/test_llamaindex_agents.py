"""LlamaIndex agents (llama-index-core FunctionAgent, ReActAgent, AgentWorkflow) against the scripted
local server (chat_server.py).

Real: llama-index-core's agents, tools and workflow runtime, the ``openai`` 3.x SDK and its HTTP
requests. Test double: ``OpenAIChatLLM`` (llama_openai_llm.py), a minimal ``FunctionCallingLLM``
standing in for ``llama-index-llms-openai``, which requires ``openai<3``. Its ``entered`` counter
says how many model calls an agent *attempted* (a refused one included), which is how these tests
see that an agent did not carry on after a refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import openai
import pytest
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent
from llama_index.core.tools import FunctionTool

import budgetspan
from budgetspan import attributes as A
from budgetspan.instrumentation.llamaindex_agents import LlamaIndexAgentsInstrumentor
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.conftest import Tracing, instrumentors_on
from tests.instrumentation.chat_server import ChatServer
from tests.instrumentation.hidden_libraries import preamble, run_script
from tests.instrumentation.llama_openai_llm import OpenAIChatLLM

# ``_call_tool`` (private) is where the agents catch every exception of a tool: verified on these.
VERIFIED = {"llama-index-core": "0.14.25", "llama-index-workflows": "2.26.1"}


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
def li_tracing(tracing: Tracing) -> Iterator[Tracing]:
    with instrumentors_on(OpenAIInstrumentor(), LlamaIndexAgentsInstrumentor()):
        yield tracing


class Weather:
    """A FunctionTool whose body records that it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        def get_weather(city: str) -> str:
            """Weather for a city."""
            self.ran.append(city)
            return f"sunny in {city}"

        self.tool = FunctionTool.from_defaults(get_weather)


def _agent(kind: str, llm: OpenAIChatLLM, tools: list[Any]) -> Any:
    if kind == "react":
        return ReActAgent(name="weather_agent", tools=tools, llm=llm)
    return FunctionAgent(
        name="weather_agent", description="weather", tools=tools, llm=llm, streaming=kind == "function_stream"
    )


def test_verified_versions() -> None:
    for dist, verified in VERIFIED.items():
        assert version(dist) == verified, f"{dist} {version(dist)}: re-run these tests and update VERIFIED"


@pytest.mark.parametrize("kind", ["function", "function_stream"])
async def test_agent_span_tool_span_and_one_chat_span_per_request(
    li_tracing: Tracing, chat_server: ChatServer, tag: str, kind: str
) -> None:
    model = f"fake-r1-{tag}"
    weather = Weather()
    agent = _agent(kind, OpenAIChatLLM(model=model, base_url=chat_server.base_url), [weather.tool])
    async with budgetspan.run("trip") as run:
        result = await agent.run(user_msg="weather in Paris?")
    assert str(result) == "Done after 1 tool calls."
    sent = chat_server.for_model(model)
    assert [(r.answer, r.stream) for r in sent] == [("tool:get_weather", kind != "function")] * 1 + [
        ("text", kind != "function")
    ]
    (agent_span,) = li_tracing.spans("invoke_agent weather_agent")
    (run_span,) = li_tracing.spans("invoke_agent trip")
    assert agent_span.parent.span_id == run_span.context.span_id
    assert _attrs(agent_span)[A.AGENT_FRAMEWORK] == "llamaindex"
    chats = li_tracing.spans("chat ")
    assert len(chats) == 2
    for span, req in zip(chats, sent, strict=True):
        assert span.parent.span_id == agent_span.context.span_id
        assert _attrs(span)[A.GEN_AI_USAGE_INPUT_TOKENS] == req.usage["prompt_tokens"]
        assert _attrs(span)[A.GEN_AI_USAGE_OUTPUT_TOKENS] == req.usage["completion_tokens"]
    (tool_span,) = li_tracing.spans("execute_tool")
    assert tool_span.name == "execute_tool get_weather"  # _call_tool and FunctionTool.acall: once
    assert tool_span.parent.span_id == agent_span.context.span_id
    assert _attrs(tool_span)[A.TOOL_SYSTEM] == "llamaindex"
    assert run.usage.model_calls == 2 and run.usage.tool_calls == 1 and weather.ran == ["Paris"]


@pytest.mark.parametrize("kind", ["function", "function_stream", "react"])
async def test_max_tool_calls_1_three_rounds_runs_one_body(
    li_tracing: Tracing, chat_server: ChatServer, tag: str, kind: str
) -> None:
    model = f"fake-r3-{tag}"
    weather = Weather()
    llm = OpenAIChatLLM(model=model, base_url=chat_server.base_url)
    agent = _agent(kind, llm, [weather.tool])
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        async with budgetspan.run("trip", max_tool_calls=1):
            await agent.run(user_msg="weather in Paris?")
    assert weather.ran == ["Paris"]
    assert info.value.reason == "max_tool_calls"
    assert [r["result"].content for r in info.value.partial["tool_results"]] == ["sunny in Paris"]
    assert [r.answer for r in chat_server.for_model(model)] == ["tool:get_weather"] * 2
    assert llm.entered == 2  # the agent stopped at the refusal: no third turn
    assert [s.name for s in li_tracing.spans("execute_tool")] == ["execute_tool get_weather"]
    (agent_span,) = li_tracing.spans("invoke_agent weather_agent")
    assert agent_span.status.is_ok


async def test_max_model_calls_sends_exactly_n_requests(
    li_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    model = f"fake-r3-{tag}"
    weather = Weather()
    agent = _agent(
        "function_stream", OpenAIChatLLM(model=model, base_url=chat_server.base_url), [weather.tool]
    )
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        async with budgetspan.run("trip", max_model_calls=2):
            await agent.run(user_msg="weather in Paris?")
    assert info.value.reason == "max_model_calls"
    assert len(chat_server.for_model(model)) == 2
    assert weather.ran == ["Paris", "Paris"] and len(info.value.partial["tool_results"]) == 2
    assert len(li_tracing.spans("chat ")) == 2


async def test_refusal_inside_a_tool_is_not_handed_to_the_model(
    li_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    """A tool that calls a model itself is refused there; _call_tool would make that an error
    ToolOutput and let the agent go on."""
    model = f"fake-r1-{tag}"
    client = openai.OpenAI(base_url=chat_server.base_url, api_key="test", max_retries=0)

    def summarize(city: str) -> str:
        """Summarize the weather for a city (asks a model)."""
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": city}])
        return str(answer.choices[0].message.content)

    llm = OpenAIChatLLM(model=model, base_url=chat_server.base_url)
    agent = _agent("function", llm, [FunctionTool.from_defaults(summarize)])
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        async with budgetspan.run("trip", max_model_calls=1):
            await agent.run(user_msg="weather in Paris?")
    assert info.value.reason == "max_model_calls"
    assert llm.entered == 1  # without the fix the agent takes another turn with the error
    assert len(chat_server.for_model(model)) == 1


async def test_ordinary_tool_errors_still_go_to_the_model(
    li_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    model = f"fake-r1-{tag}"

    def get_weather(city: str) -> str:
        """Weather for a city."""
        raise ValueError("weather service down")

    agent = _agent(
        "function",
        OpenAIChatLLM(model=model, base_url=chat_server.base_url),
        [FunctionTool.from_defaults(get_weather)],
    )
    async with budgetspan.run("trip") as run:
        result = await agent.run(user_msg="weather in Paris?")
    assert str(result) == "Done after 1 tool calls."
    (tool_span,) = li_tracing.spans("execute_tool get_weather")
    assert not tool_span.status.is_ok  # an error ToolOutput
    assert run.usage.tool_calls == 1 and run.partial["tool_results"] == []


async def test_agent_workflow_handoff_and_turn_spans(
    li_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    model = f"fake-r1-{tag}"
    llm = OpenAIChatLLM(model=model, base_url=chat_server.base_url)
    weather = Weather()
    triage = FunctionAgent(
        name="triage", description="routes", tools=[], llm=llm, can_handoff_to=["weather_agent"]
    )
    workflow = AgentWorkflow(
        agents=[triage, _agent("function_stream", llm, [weather.tool])], root_agent="triage"
    )
    async with budgetspan.run("trip", max_tool_calls=1) as run:
        await workflow.run(user_msg="weather in Paris?")
    assert weather.ran == ["Paris"]
    assert [r.answer for r in chat_server.for_model(model)] == ["tool:handoff", "tool:get_weather", "text"]
    (wf,) = li_tracing.spans("invoke_agent AgentWorkflow")
    handoffs = [e for e in wf.events if e.name == A.EVENT_HANDOFF]
    assert [(e.attributes[A.HANDOFF_FROM], e.attributes[A.HANDOFF_TO]) for e in handoffs] == [
        ("triage", "weather_agent")
    ]
    turns = [
        s.name
        for s in li_tracing.spans("invoke_agent")
        if s.parent and s.parent.span_id == wf.context.span_id
    ]
    assert turns == ["invoke_agent triage", "invoke_agent weather_agent", "invoke_agent weather_agent"]
    turn_ids = [s.context.span_id for s in li_tracing.spans("invoke_agent") if s.name in turns]
    assert [s.parent.span_id for s in li_tracing.spans("chat ")] == turn_ids  # each turn's model call
    # the handoff is not a tool call: max_tool_calls=1 is left for get_weather
    assert [s.name for s in li_tracing.spans("execute_tool")] == ["execute_tool get_weather"]
    assert run.usage.tool_calls == 1 and run.usage.model_calls == 3


def test_function_tool_called_directly_is_counted_and_refused(li_tracing: Tracing) -> None:
    weather = Weather()
    with pytest.raises(budgetspan.BudgetExhausted) as info, budgetspan.run("trip", max_tool_calls=1):
        weather.tool.call(city="Paris")
        weather.tool(city="Lyon")  # __call__ -> call: refused before the body
    assert weather.ran == ["Paris"] and info.value.reason == "max_tool_calls"
    assert [s.name for s in li_tracing.spans("execute_tool")] == ["execute_tool get_weather"]


_TOOL_WITHOUT_AGENTS = """
import json, sys, wrapt
when = sys.argv[1] if len(sys.argv) > 1 else "{when}"
if when == "before":
    budgetspan.configure()
from llama_index.core.tools import FunctionTool  # and no agent: llm.predict_and_call(tools) calls it
if when == "after":
    budgetspan.configure()
ran = []

def get_weather(city: str) -> str:
    "The weather in a city."
    ran.append(city)
    return "sunny"

weather = FunctionTool.from_defaults(fn=get_weather)
reason = None
try:
    with budgetspan.run("wf", max_tool_calls=1):
        weather.call(city="paris")
        weather.call(city="oslo")
except budgetspan.BudgetExhausted as e:
    reason = e.reason
call, ours = vars(FunctionTool)["call"], 0
while isinstance(call, wrapt.FunctionWrapper):
    ours += "budgetspan" in call._self_wrapper.__code__.co_filename
    call = call.__wrapped__
print(json.dumps({"reason": reason, "ran": ran, "wrapped": ours, "warnings": warnings, "errors": errors}))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_function_tool_called_outside_agents_is_counted_and_refused(when: str) -> None:
    """An app that calls FunctionTools without LlamaIndex's agents (``predict_and_call``, or
    ``tool.call``) never imports ``llama_index.core.agent.workflow``: its tools are still counted,
    once (one wrapper). A fresh interpreter, configured before or after the import."""
    result, _ = run_script(preamble([]) + _TOOL_WITHOUT_AGENTS.replace("{when}", when))
    assert result["reason"] == "max_tool_calls"
    assert result["ran"] == ["paris"]
    assert result["wrapped"] == 1
    assert result["warnings"] == [] and result["errors"] == []
