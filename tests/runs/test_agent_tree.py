"""A small agent, end to end, through real libraries: the exported span tree tells its story.

context assembly (a Chroma query) -> model decision (one recorded OpenAI exchange through the real
``openai`` SDK) -> tool execution (an MCP tool on a real MCP server and a LangChain tool, in
parallel) -> verification (a second Chroma query) -> approval (a human wait) -> final response.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import chromadb
import openai
import pytest
from chromadb.config import Settings
from langchain_core.tools import StructuredTool

import budgetspan
from budgetspan import attributes as A
from budgetspan.accounting.budget import ToolLimits
from budgetspan.instrumentation.chroma import ChromaInstrumentor
from budgetspan.instrumentation.langchain import LangChainInstrumentor
from budgetspan.instrumentation.mcp import MCPInstrumentor
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.conftest import Tracing
from tests.mcp_server import connect
from tests.replay import replay, requests_of

CASSETTE = "openai/test_chat__test_chat.yaml"  # one exchange: 15 input, 19 output tokens


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
def instrumented(tracing: Tracing) -> Iterator[Tracing]:
    instrumentors = [
        ChromaInstrumentor(),
        LangChainInstrumentor(),
        MCPInstrumentor(),
        OpenAIInstrumentor(),
    ]
    for inst in instrumentors:
        inst.instrument()
    yield tracing
    for inst in instrumentors:
        inst.uninstrument()


@pytest.fixture
def policies() -> Iterator[Any]:
    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    col = client.create_collection(f"policies-{uuid.uuid4().hex[:8]}", embedding_function=None)
    col.add(
        ids=["refund", "shipping", "cancel"],
        embeddings=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        documents=[
            "Refunds are paid within 5 days.",
            "Orders ship within 2 days.",
            "Orders can be cancelled before they ship.",
        ],
    )
    yield col
    client.delete_collection(col.name)


checked: list[str] = []


async def check_stock(sku: str) -> str:
    """Stock level of one item (a LangChain tool that takes a while)."""
    checked.append(sku)
    await asyncio.sleep(0.2)
    return f"{sku}: 3 in stock"


stock_tool = StructuredTool.from_function(
    coroutine=check_stock, name="check_stock", description="Stock level of one item."
)


async def agent(session: Any, policies: Any, run: budgetspan.Run) -> str:
    """The agent's steps; phases come from defaults except where the agent says otherwise."""
    context = policies.query(query_embeddings=[[0.9, 0.2, 0.0]], n_results=2)

    client = openai.AsyncOpenAI(api_key="test", max_retries=0)
    with replay(CASSETTE):
        decision = await client.chat.completions.create(**requests_of(CASSETTE)[0])

    order, stock = await asyncio.gather(
        session.call_tool("slow", {"seconds": 0.2}),
        stock_tool.ainvoke({"sku": "SKU-1"}),
    )

    with budgetspan.phase("verification"):
        policy = policies.query(query_embeddings=[[1.0, 0.0, 0.0]], n_results=1)
        assert policy["ids"] == [["refund"]]

    with budgetspan.approval("refund sign-off"):
        await asyncio.sleep(0.05)  # a human says yes

    with budgetspan.phase("final_response"):
        answer = " ".join(
            [
                str(decision.choices[0].message.content),
                context["documents"][0][0],
                order.content[0].text,
                stock,
            ]
        )
        run.succeed(answer)
    return answer


async def test_small_agent_span_tree(instrumented: Tracing, policies: Any) -> None:
    async with connect() as session:
        await session.list_tools()  # before the run: listing is neither a call nor in the run
        async with budgetspan.run("resolve_ticket", max_model_calls=2, max_tool_calls=4) as run:
            answer = await agent(session, policies, run)
    assert "baggage" in answer and "slept 0.2" in answer and "SKU-1: 3 in stock" in answer

    spans = instrumented.exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    (root,) = [s for s in spans if s.name == "invoke_agent resolve_ticket"]

    # Every span, its phase and its parent: nothing missing, nothing doubled.
    tree = Counter(
        (
            s.name,
            _attrs(s).get(A.PHASE),
            by_id[s.parent.span_id].name if s.parent and s.parent.span_id in by_id else None,
        )
        for s in spans
    )
    col = f"retrieval {policies.name}"
    assert tree == Counter(
        {
            ("invoke_agent resolve_ticket", None, None): 1,
            (col, "context_assembly", "invoke_agent resolve_ticket"): 1,
            ("chat gpt-3.5-turbo", "model_decision", "invoke_agent resolve_ticket"): 1,
            ("execute_tool slow", "tool_execution", "invoke_agent resolve_ticket"): 1,
            ("execute_tool check_stock", "tool_execution", "invoke_agent resolve_ticket"): 1,
            ("phase verification", "verification", "invoke_agent resolve_ticket"): 1,
            (col, "verification", "phase verification"): 1,
            ("phase approval", "approval", "invoke_agent resolve_ticket"): 1,
            ("phase final_response", "final_response", "invoke_agent resolve_ticket"): 1,
        }
    )
    assert all(_attrs(s).get(A.RUN_ID) == run.id for s in spans)
    # Each phase shows up where expected: one phase span each for the scoped ones.
    phases = Counter(_attrs(s)[A.PHASE] for s in spans if s.name.startswith("phase "))
    assert phases == {"verification": 1, "approval": 1, "final_response": 1}
    (approval,) = [s for s in spans if s.name == "phase approval"]
    assert _attrs(approval)[A.PHASE_LABEL] == "refund sign-off"
    assert approval.end_time - approval.start_time >= 50_000_000  # it measured the human wait

    # The run's counts and spend.
    usage = run.usage
    assert usage.model_calls == 1 and usage.tool_calls == 2 and usage.tools_finished == 2
    assert usage.input_tokens == 15 and usage.output_tokens == 19
    (chat,) = [s for s in spans if s.name.startswith("chat ")]
    assert usage.cost_usd == pytest.approx(_attrs(chat)[A.GEN_AI_USAGE_COST])
    assert run.outcome is budgetspan.Outcome.SUCCESS and run.result == answer
    ra = _attrs(root)
    assert ra[A.RUN_OUTCOME] == "success"
    assert ra[A.USAGE_PREFIX + "model_calls"] == 1 and ra[A.USAGE_PREFIX + "tool_calls"] == 2
    assert [r["tool"] for r in run.partial["tool_results"]] == ["check_stock", "slow"]

    # Parallelism: busy time is the sum of the run's calls; the two tools overlapped, so the
    # calls' busy time exceeds the wall time they covered.
    calls = [
        s for s in spans if _attrs(s).get(A.GEN_AI_OPERATION_NAME) in {"retrieval", "chat", "execute_tool"}
    ]
    calls = [s for s in calls if by_id[s.parent.span_id].name.startswith(("invoke_agent", "phase"))]
    busy = sum((s.end_time - s.start_time) / 1e9 for s in calls)
    # Each call's time is measured inside its span, so the sum never exceeds the spans' (a double
    # count would); the two tools each waited 0.2 s, so it holds at least that (a lost call would
    # not). No upper bound on how long anything took: that is the benchmarks' business. (The run
    # times each call around its span: on a loaded machine that adds up to tens of ms, below the
    # 0.2 s a double count would add; the margin is 0.12 s, as a loaded machine once passed 0.05.)
    assert 0.39 <= ra[A.RUN_BUSY_S] <= busy + 0.12
    tools = [s for s in spans if s.name.startswith("execute_tool")]
    assert len(tools) == 2
    assert max(s.start_time for s in tools) < min(s.end_time for s in tools)  # side by side
    assert ra[A.RUN_PARALLELISM] == pytest.approx(ra[A.RUN_BUSY_S] / ra[A.RUN_WALL_S])
    assert ra[A.RUN_BUSY_S] > _union([(s.start_time, s.end_time) for s in calls]) / 1e9
    # Independent read-only calls are findable: the reads carry budgetspan.read_only.
    reads = [s.name for s in spans if _attrs(s).get(A.READ_ONLY)]
    assert sorted(reads) == [col, col]


def _union(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


async def test_agent_over_its_tool_budget_stops_in_a_useful_state(
    instrumented: Tracing, policies: Any
) -> None:
    """A tool past its timeout is cancelled and recorded; the next one over the cap never runs."""
    checked.clear()
    records: list[budgetspan.CallRecord] = []

    class Listener:
        def on_call_end(self, record: budgetspan.CallRecord) -> None:
            records.append(record)

    listener = Listener()
    budgetspan.add_listener(listener)
    try:
        await _over_budget(instrumented, policies)
    finally:
        budgetspan.remove_listener(listener)
    # What metrics see: the timeout is a tool call with status "timeout"; the refused one is absent.
    assert [(r.kind, r.tool, r.status) for r in records] == [
        ("retrieval", None, "ok"),
        ("tool", "lookup_order", "ok"),
        ("tool", "slow", "timeout"),
    ]
    assert records[0].documents == 1


async def _over_budget(instrumented: Tracing, policies: Any) -> None:
    async with connect() as session:
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            async with budgetspan.run(
                "resolve_ticket", max_tool_calls=2, tools={"slow": ToolLimits(timeout_s=0.1)}
            ) as run:
                policies.query(query_embeddings=[[1.0, 0.0, 0.0]], n_results=1)
                order = await session.call_tool("lookup_order", {"order_id": "A-9"})
                with pytest.raises(budgetspan.ToolTimeout):
                    await session.call_tool("slow", {"seconds": 5})
                await stock_tool.ainvoke({"sku": "SKU-2"})  # the third tool call: refused
    exc = info.value
    assert exc.reason == "max_tool_calls" and checked == []  # refused before it ran
    assert exc.partial["tool_results"] == [{"tool": "lookup_order", "result": order}]
    assert exc.explanation.startswith("Stopped after 2 of 2 tool calls; 1 of 2 tools finished")
    (slow,) = instrumented.spans("execute_tool slow")
    assert _attrs(slow)[A.TOOL_TIMED_OUT] is True and _attrs(slow)[A.TOOL_TIMEOUT_S] == 0.1
    assert instrumented.spans("execute_tool check_stock") == []
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED
    (root,) = instrumented.spans("invoke_agent")
    assert _attrs(root)[A.EXHAUSTED_REASON] == "max_tool_calls"
