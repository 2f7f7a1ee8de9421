"""LangGraph ``Send`` fan-out (map-reduce) under one run's budget (attack 19): a node returns
``[Send("worker", x) for x in items]``; the workers call the real ``openai`` SDK against the
scripted chat server, or a LangChain tool. LangGraph runs the branches in a thread pool (sync
graph) or as tasks (async graph): every branch spends from the one run, the limit holds exactly,
the run ends ``budget_exhausted`` with the finished tools in its partial result.
"""

from __future__ import annotations

import asyncio
import operator
import threading
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import httpx
import openai
import pytest
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

import budgetspan
from budgetspan.instrumentation.langchain import LangChainInstrumentor
from budgetspan.instrumentation.langgraph import LangGraphInstrumentor
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.conftest import Tracing, instrumentors_on
from tests.instrumentation.chat_server import ChatServer

ITEMS = [f"page-{i}" for i in range(8)]


class State(TypedDict):
    items: list[str]
    results: Annotated[list[str], operator.add]


@pytest.fixture
def graph_tracing(tracing: Tracing) -> Iterator[Tracing]:
    with instrumentors_on(OpenAIInstrumentor(), LangChainInstrumentor(), LangGraphInstrumentor()):
        yield tracing


class Fetched:
    """A LangChain tool whose bodies record what they fetched."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        lock = threading.Lock()

        @tool
        def fetch_page(url: str) -> str:
            """Fetch a page."""
            with lock:
                self.ran.append(url)
            return f"text of {url}"

        self.tool = fetch_page


def _graph(server: ChatServer, model: str, fetched: Fetched, asynchronous: bool, work: str) -> Any:
    """START -> Send("worker", item) for each item -> END; the worker calls the model or the tool."""
    client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    aclient = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, http_client=httpx.AsyncClient()
    )

    def fan_out(state: State) -> list[Send]:
        return [Send("worker", {"items": [item], "results": []}) for item in state["items"]]

    def worker(state: State) -> dict[str, Any]:
        item = state["items"][0]
        if work == "tool":
            return {"results": [fetched.tool.invoke({"url": item})]}
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": item}], max_tokens=50
        )
        return {"results": [answer.choices[0].message.content]}

    async def aworker(state: State) -> dict[str, Any]:
        item = state["items"][0]
        if work == "tool":
            return {"results": [await fetched.tool.ainvoke({"url": item})]}
        answer = await aclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": item}], max_tokens=50
        )
        return {"results": [answer.choices[0].message.content]}

    g = StateGraph(State)
    g.add_node("worker", aworker if asynchronous else worker)
    g.add_conditional_edges(START, fan_out, ["worker"])
    g.add_edge("worker", END)
    return g.compile(name="mapper")


def _run(graph: Any, asynchronous: bool, limits: dict[str, Any]) -> tuple[Any, BaseException | None]:
    runs: list[Any] = []

    async def ainvoke() -> None:
        async with budgetspan.run("map_reduce", **limits) as run:
            runs.append(run)
            await graph.ainvoke({"items": ITEMS, "results": []})

    try:
        if asynchronous:
            asyncio.run(ainvoke())
        else:
            with budgetspan.run("map_reduce", **limits) as run:
                runs.append(run)
                graph.invoke({"items": ITEMS, "results": []})
    except budgetspan.BudgetExhausted as stopped:
        return runs[0], stopped
    return runs[0], None


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_model_workers_spend_from_the_one_run_and_the_limit_holds_exactly(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str, asynchronous: bool
) -> None:
    """8 branches under ``max_model_calls=3``: 3 reserved, the 4th refused. An async graph cancels
    the branches still in flight when one fails, so up to 3 reach the server; a sync graph lets
    the 3 finish."""
    model = f"fake-r1-{tag}"
    graph = _graph(chat_server, model, Fetched(), asynchronous, "model")
    run, stopped = _run(graph, asynchronous, {"max_model_calls": 3})
    sent = len(chat_server.for_model(model))
    assert stopped is not None and stopped.reason == "max_model_calls"
    assert run.usage.model_calls == 3
    assert sent == 3 if not asynchronous else sent <= 3
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_model_workers_hold_max_cost_usd_with_every_branch_in_flight(
    graph_tracing: Tracing, chat_server: ChatServer, asynchronous: bool
) -> None:
    """gpt-4o-mini, ``max_tokens=50``: about $0.00003 held per call before it is sent, settled
    with the (much smaller) reported usage when it ends, so how many fit depends on how many were
    in flight together: at least 3, never more spent than the limit."""
    limit = 0.00012
    before = len(chat_server.requests)
    graph = _graph(chat_server, "gpt-4o-mini", Fetched(), asynchronous, "model")
    run, stopped = _run(graph, asynchronous, {"max_cost_usd": limit})
    sent = len(chat_server.requests) - before
    assert stopped is not None and stopped.reason == "max_cost_usd"
    assert 3 <= run.usage.model_calls < len(ITEMS)
    assert sent == run.usage.model_calls if not asynchronous else sent <= run.usage.model_calls
    assert run.usage.cost_usd <= limit
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_tool_workers_run_exactly_max_tool_calls_bodies(
    graph_tracing: Tracing, chat_server: ChatServer, asynchronous: bool
) -> None:
    fetched = Fetched()
    graph = _graph(chat_server, "unused", fetched, asynchronous, "tool")
    run, stopped = _run(graph, asynchronous, {"max_tool_calls": 3})
    assert stopped is not None and stopped.reason == "max_tool_calls"
    assert len(fetched.ran) == 3 and run.usage.tool_calls == 3
    assert sorted(r["tool"] for r in stopped.partial["tool_results"]) == ["fetch_page"] * 3
    assert len(graph_tracing.spans("execute_tool fetch_page")) == 3
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_all_branches_are_counted_in_the_run_without_a_limit(
    graph_tracing: Tracing, chat_server: ChatServer, tag: str, asynchronous: bool
) -> None:
    model = f"fake-r1-{tag}"
    graph = _graph(chat_server, model, Fetched(), asynchronous, "model")
    run, stopped = _run(graph, asynchronous, {})
    assert stopped is None and run.outcome is budgetspan.Outcome.SUCCESS
    assert len(chat_server.for_model(model)) == 8 and run.usage.model_calls == 8
    (agent,) = graph_tracing.spans("invoke_agent mapper")
    chats = graph_tracing.spans("chat ")
    assert len(chats) == 8 and all(s.parent.span_id == agent.context.span_id for s in chats)
