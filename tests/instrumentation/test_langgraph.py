"""LangGraph (langgraph, langgraph-prebuilt, langgraph-supervisor) with the real ``langchain-openai``
chat model over the real ``openai`` SDK, against the scripted local server (chat_server.py).

What a bug would break, and where it is seen: the requests that reached the server (counted there),
the tool bodies that ran (counted in the tool), ``run.usage``, the spans, and the exception the
caller gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, create_react_agent, tools_condition
from langgraph.types import RetryPolicy

import budgetspan
from budgetspan import attributes as A
from budgetspan.instrumentation import langgraph as lg
from budgetspan.instrumentation.langchain import LangChainInstrumentor
from budgetspan.instrumentation.langgraph import LangGraphInstrumentor
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.conftest import Tracing, instrumentors_on
from tests.instrumentation.chat_server import ChatServer
from tests.instrumentation.functional_api_app import FUNCTIONAL_API_APP
from tests.instrumentation.hidden_libraries import preamble, run_script

# The private functions the refusal fixes wrap are verified on these versions.
VERIFIED = {"langgraph": "1.2.24", "langgraph-prebuilt": "1.1.3"}

pytestmark = pytest.mark.filterwarnings("ignore:create_react_agent has been moved")

Q = {"messages": [("user", "weather in Paris?")]}


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
def graph_tracing(tracing: Tracing) -> Iterator[Tracing]:
    with instrumentors_on(OpenAIInstrumentor(), LangChainInstrumentor(), LangGraphInstrumentor()):
        yield tracing


class Bodies:
    """Tools whose bodies record that they ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        @tool
        def get_weather(city: str) -> str:
            """Weather for a city."""
            self.ran.append(city)
            return f"sunny in {city}"

        self.get_weather = get_weather


def _llm(server: ChatServer, model: str) -> ChatOpenAI:
    # A fresh async HTTP client: langchain-openai's shared one stays bound to a closed event loop.
    return ChatOpenAI(
        model=model,
        base_url=server.base_url,
        api_key="test",
        max_retries=0,
        http_async_client=httpx.AsyncClient(),
    )


def test_verified_versions() -> None:
    """The refusal fixes wrap private LangGraph functions: a new version must be checked again."""
    for dist, verified in VERIFIED.items():
        assert version(dist) == verified, f"{dist} {version(dist)}: re-run these tests and update VERIFIED"


def test_both_refusal_guards_are_patched_and_a_missing_one_is_named(
    tracing: Tracing, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = ("langgraph.pregel._retry", "_no_such_guard", lg._should_retry_on, "something is lost")
    monkeypatch.setattr(lg, "_GUARDS", (*lg._GUARDS, missing))
    inst = LangGraphInstrumentor()
    with instrumentors_on(inst):
        patched = {name for _owner, name in inst._patched}
    assert {"stream", "astream", "_handle_tool_error", "_should_retry_on"} == patched
    assert [r.getMessage() for r in caplog.records] == [
        "budgetspan: this LangGraph has no langgraph.pregel._retry._no_such_guard: something is lost"
    ]


def test_named_agent_span_tool_and_chat_spans(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    model, _, agent = _weather_agent(chat_server, "fake-r1", tag)
    with budgetspan.run("trip") as run:
        result = agent.invoke(Q)
    assert result["messages"][-1].content == "Done after 1 tool calls."
    sent = chat_server.for_model(model)
    assert [r.answer for r in sent] == ["tool:get_weather", "text"]
    (agent_span,) = graph_tracing.spans("invoke_agent weather_agent")
    (run_span,) = graph_tracing.spans("invoke_agent trip")
    assert agent_span.parent.span_id == run_span.context.span_id
    assert _attrs(agent_span)[A.GEN_AI_AGENT_NAME] == "weather_agent"
    assert _attrs(agent_span)[A.AGENT_FRAMEWORK] == "langgraph"
    chats = graph_tracing.spans("chat ")
    assert len(chats) == len(sent) == 2  # one chat span per request, none at the LangChain layer
    for span, req in zip(chats, sent, strict=True):
        assert span.parent.span_id == agent_span.context.span_id
        assert _attrs(span)[A.GEN_AI_USAGE_INPUT_TOKENS] == req.usage["prompt_tokens"]
        assert _attrs(span)[A.GEN_AI_USAGE_OUTPUT_TOKENS] == req.usage["completion_tokens"]
    (tool_span,) = graph_tracing.spans("execute_tool")
    assert tool_span.name == "execute_tool get_weather"  # counted once (by the LangChain tool wrapper)
    assert tool_span.parent.span_id == agent_span.context.span_id
    assert run.usage.model_calls == 2 and run.usage.tool_calls == 1
    assert run.usage.input_tokens == sum(r.usage["prompt_tokens"] for r in sent)


def test_unnamed_graph_makes_no_agent_span(graph_tracing: Tracing, chat_server: ChatServer, tag: str) -> None:
    agent = create_react_agent(_llm(chat_server, f"fake-r1-{tag}"), [Bodies().get_weather])
    with budgetspan.run("trip"):
        agent.invoke(Q)
    assert [s.name for s in graph_tracing.spans("invoke_agent")] == ["invoke_agent trip"]


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream_messages"])
def test_max_tool_calls_1_three_rounds_runs_one_body(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str, mode: str
) -> None:
    model, bodies, agent = _weather_agent(chat_server, "fake-r3", tag)

    async def ainvoke() -> None:
        async with budgetspan.run("trip", max_tool_calls=1):
            await agent.ainvoke(Q)

    with pytest.raises(budgetspan.BudgetExhausted) as info:
        if mode == "ainvoke":
            asyncio.run(ainvoke())
        else:
            with budgetspan.run("trip", max_tool_calls=1):
                if mode == "invoke":
                    agent.invoke(Q)
                else:
                    list(agent.stream(Q, stream_mode="messages"))
    assert bodies.ran == ["Paris"]
    assert info.value.reason == "max_tool_calls"
    assert [r["result"].content for r in info.value.partial["tool_results"]] == ["sunny in Paris"]
    sent = chat_server.for_model(model)
    assert [r.answer for r in sent] == ["tool:get_weather", "tool:get_weather"]
    assert all(r.stream is (mode == "stream_messages") for r in sent)
    chats = graph_tracing.spans("chat ")
    assert [_attrs(s)[A.GEN_AI_USAGE_INPUT_TOKENS] for s in chats] == [r.usage["prompt_tokens"] for r in sent]
    (agent_span,) = graph_tracing.spans("invoke_agent weather_agent")
    assert agent_span.status.is_ok  # a refusal is the run's outcome, not an agent error


def test_max_model_calls_sends_exactly_n_requests(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    model, bodies, agent = _weather_agent(chat_server, "fake-r3", tag)
    with pytest.raises(budgetspan.BudgetExhausted) as info, budgetspan.run("trip", max_model_calls=2):
        agent.invoke(Q)
    assert info.value.reason == "max_model_calls"
    assert len(chat_server.for_model(model)) == 2
    assert bodies.ran == ["Paris", "Paris"]
    assert len(info.value.partial["tool_results"]) == 2
    assert len(graph_tracing.spans("chat ")) == 2


def test_handle_tool_errors_true_does_not_swallow_a_refusal(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    model = f"fake-r3-{tag}"
    bodies = Bodies()
    node = ToolNode([bodies.get_weather], handle_tool_errors=True)
    turns: list[int] = []

    def before_model(state: dict[str, Any]) -> dict[str, Any]:
        turns.append(len(state["messages"]))
        return {"llm_input_messages": state["messages"]}

    agent = create_react_agent(
        _llm(chat_server, model), node, name="weather_agent", pre_model_hook=before_model
    )
    with pytest.raises(budgetspan.BudgetExhausted) as info, budgetspan.run("trip", max_tool_calls=1):
        agent.invoke(Q)
    assert info.value.reason == "max_tool_calls"
    assert bodies.ran == ["Paris"] and info.value.partial["tool_results"]
    # the refusal did not go back to the agent as an error ToolMessage: no third turn began
    assert len(turns) == 2
    assert len(chat_server.for_model(model)) == 2


def test_handle_tool_errors_still_handles_ordinary_errors(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    model = f"fake-r1-{tag}"

    @tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        raise ValueError("weather service down")

    node = ToolNode([get_weather], handle_tool_errors=True)
    agent = create_react_agent(_llm(chat_server, model), node, name="weather_agent")
    with budgetspan.run("trip"):
        result = agent.invoke(Q)
    errors = [m for m in result["messages"] if isinstance(m, ToolMessage) and m.status == "error"]
    assert len(errors) == 1 and "weather service down" in errors[0].content
    assert len(chat_server.for_model(model)) == 2


def _weather_agent(chat_server: ChatServer, script: str, tag: str) -> tuple[str, Bodies, Any]:
    """A react agent ``weather_agent`` with the get_weather tool, on the chat server's model
    ``{script}-{tag}`` (returned, to filter the server's log by)."""
    model = f"{script}-{tag}"
    bodies = Bodies()
    return (
        model,
        bodies,
        create_react_agent(_llm(chat_server, model), [bodies.get_weather], name="weather_agent"),
    )


def _retry_graph(llm: ChatOpenAI, entries: list[str], fail_with: Exception | None) -> Any:
    """model node + a tools node (that counts its attempts) under RetryPolicy(max_attempts=3)."""
    bodies = Bodies()
    bound = llm.bind_tools([bodies.get_weather])

    def model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    def tools(state: MessagesState) -> dict[str, Any]:
        entries.append("tools")
        if fail_with is not None:
            raise fail_with
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        return {
            "messages": [bodies.get_weather.invoke(dict(call, type="tool_call")) for call in last.tool_calls]
        }

    g = StateGraph(MessagesState)
    g.add_node("model", model)
    g.add_node("tools", tools, retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False))
    g.add_edge(START, "model")
    g.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    g.add_edge("tools", "model")
    return g.compile(name="retrying_graph")


def test_retry_policy_does_not_retry_a_refusal(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    model = f"fake-r3-{tag}"
    entries: list[str] = []
    graph = _retry_graph(_llm(chat_server, model), entries, None)
    with pytest.raises(budgetspan.BudgetExhausted) as info, budgetspan.run("trip", max_tool_calls=1):
        graph.invoke(Q)
    assert info.value.reason == "max_tool_calls" and info.value.partial["tool_results"]
    assert entries == ["tools", "tools"]  # round 1 ran; round 2 was refused once, not retried
    assert len(chat_server.for_model(model)) == 2
    (agent_span,) = graph_tracing.spans("invoke_agent retrying_graph")
    assert agent_span.status.is_ok


def test_retry_policy_still_retries_ordinary_errors(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    """The control: the same graph does retry an error that is not a refusal."""
    entries: list[str] = []
    graph = _retry_graph(_llm(chat_server, f"fake-r1-{tag}"), entries, ConnectionError("flaky"))
    with pytest.raises(ConnectionError), budgetspan.run("trip"):
        graph.invoke(Q)
    assert entries == ["tools"] * 3


async def test_astream_agent_span_is_current_only_inside_the_graph(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    agent = create_react_agent(
        _llm(chat_server, f"fake-r1-{tag}"), [Bodies().get_weather], name="weather_agent"
    )
    from opentelemetry import trace

    async with budgetspan.run("trip"):
        outside = []
        async for _chunk in agent.astream(Q, stream_mode="updates"):
            outside.append(trace.get_current_span())
    (agent_span,) = graph_tracing.spans("invoke_agent weather_agent")
    assert outside and all(s.get_span_context().span_id != agent_span.context.span_id for s in outside)
    assert all(s.parent.span_id == agent_span.context.span_id for s in graph_tracing.spans("chat "))


def test_supervisor_handoff_is_an_event_on_the_supervisor_span(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str
) -> None:
    from langgraph_supervisor import create_supervisor

    model = f"fake-r1-{tag}"
    llm = _llm(chat_server, model)
    bodies = Bodies()
    weather = create_react_agent(llm, [bodies.get_weather], name="weather_agent")
    supervisor = create_supervisor([weather], model=llm, prompt="route").compile(name="supervisor")
    with budgetspan.run("support") as run:
        supervisor.invoke(Q)
    assert bodies.ran == ["Paris"]
    (sup,) = graph_tracing.spans("invoke_agent supervisor")
    (agent,) = graph_tracing.spans("invoke_agent weather_agent")
    assert agent.parent.span_id == sup.context.span_id
    handoffs = [e for e in sup.events if e.name == A.EVENT_HANDOFF]
    assert [(e.attributes[A.HANDOFF_FROM], e.attributes[A.HANDOFF_TO]) for e in handoffs] == [
        ("supervisor", "weather_agent")
    ]
    # the handoff is an event, not a tool call
    assert [s.name for s in graph_tracing.spans("execute_tool")] == ["execute_tool get_weather"]
    assert run.usage.tool_calls == 1
    assert run.usage.model_calls == len(chat_server.for_model(model))


_PLAIN_STATEGRAPH_APP = """
import json, sys, wrapt
from typing import TypedDict
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
budgetspan.configure(tracer_provider=provider)
from langgraph.graph import END, START, StateGraph  # and never langgraph.prebuilt

class State(TypedDict):
    x: int

graph = StateGraph(State)
graph.add_node("step", lambda state: {"x": state["x"] + 1})
graph.add_edge(START, "step")
graph.add_edge("step", END)
with budgetspan.run("wf"):
    graph.compile(name="my_graph").invoke({"x": 1})
prebuilt_before = "langgraph.prebuilt" in sys.modules
from langgraph.prebuilt import ToolNode  # imported later: its guard is applied then
import langgraph.prebuilt.tool_node as tool_node
print(json.dumps({
    "spans": sorted(s.name for s in spans.get_finished_spans()),
    "prebuilt_before": prebuilt_before,
    "guarded": isinstance(tool_node._handle_tool_error, wrapt.FunctionWrapper),
    "warnings": warnings, "errors": errors,
}))
"""


def test_an_app_of_plain_stategraphs_is_instrumented_and_toolnode_guarded_when_imported() -> None:
    """A graph built with ``langgraph.graph`` only (no ``langgraph.prebuilt`` import) is an agent
    span; the ToolNode guard is applied when ``prebuilt`` comes later. A fresh interpreter, since
    this module imports ``prebuilt`` at the top."""
    result, _ = run_script(preamble([]) + _PLAIN_STATEGRAPH_APP)
    assert result["spans"] == ["invoke_agent my_graph", "invoke_agent wf"]
    assert result["prebuilt_before"] is False  # budgetspan did not import it for the app
    assert result["guarded"] is True
    assert result["warnings"] == [] and result["errors"] == []


_FUNCTIONAL_API_IN_PROCESS = (
    "import json, sys\nbudgetspan.configure()\n"
    + FUNCTIONAL_API_APP
    + """
reason = run_flow(max_tool_calls=1)
print(json.dumps({
    "reason": reason, "attempts": attempts,
    "graph_imported": "langgraph.graph" in sys.modules,
    "warnings": warnings, "errors": errors,
}))
"""
)


def test_a_functional_api_app_alone_is_instrumented_its_retry_policy_not_retrying_a_refusal() -> None:
    """``@entrypoint``/``@task`` (``langgraph.func``) never import ``langgraph.graph``: LangGraph is
    still instrumented, so a task's RetryPolicy does not run a refused task again. A fresh
    interpreter, since this module imports the graph."""
    result, _ = run_script(preamble([]) + _FUNCTIONAL_API_IN_PROCESS)
    assert result["graph_imported"] is False  # the premise: only langgraph.func was imported
    assert result["reason"] == "max_tool_calls"
    assert result["attempts"] == ["paris", "oslo"]  # oslo refused once, not retried
    assert result["warnings"] == [] and result["errors"] == []


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_max_repeated_calls_stops_a_react_agent_calling_the_same_tool(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str, mode: str
) -> None:
    """Five rounds of get_weather("Paris"), each with the same answer: the third is a loop, refused
    before its body runs (was: loops were watched for ``@budgetspan.tool`` functions only, 5 bodies
    ran). The ToolMessage's call id differs each round: only its content counts as the result."""
    model, bodies, agent = _weather_agent(chat_server, "fake-r5", tag)

    async def ainvoke() -> None:
        async with budgetspan.run("trip", max_repeated_calls=3):
            await agent.ainvoke(Q)

    with pytest.raises(budgetspan.BudgetExhausted) as info:
        if mode == "ainvoke":
            asyncio.run(ainvoke())
        else:
            with budgetspan.run("trip", max_repeated_calls=3):
                agent.invoke(Q)
    assert info.value.reason == "no_progress"
    assert bodies.ran == ["Paris", "Paris"]
    assert len(chat_server.for_model(model)) == 3
