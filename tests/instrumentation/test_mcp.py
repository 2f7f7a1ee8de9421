"""MCP tool calls against a real MCP server (a subprocess over stdio, tests/mcp_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

import budgetspan
from budgetspan import attributes as A
from budgetspan.instrumentation.langchain import LangChainInstrumentor
from budgetspan.instrumentation.mcp import MCPInstrumentor
from tests.conftest import Tracing, instrumentors_on
from tests.mcp_server import connect


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
def tool_config(config_file: Callable[[str], None]) -> None:
    """Per-tool limits from the configuration file, as operations would set them."""
    config_file("[tools.slow]\ntimeout_s = 0.3\n\n[tools.lookup_order]\nmax_calls = 1\n")


@pytest.fixture
def instrumented(tracing: Tracing) -> Iterator[Tracing]:
    with instrumentors_on(MCPInstrumentor()):
        yield tracing


async def _seen(session: Any) -> list[str]:
    # `seen` is not wrapped away: it is a tool call too, made outside any run here.
    result = await session.call_tool("seen", {})
    return list((result.structured_content or {}).get("result", []))


async def test_call_tool_is_one_counted_tool_span_and_listing_is_not(
    instrumented: Tracing,
) -> None:
    async with connect() as session:
        async with budgetspan.run("support", max_tool_calls=5) as run:
            tools = await session.list_tools()
            await session.list_resources()
            result = await session.call_tool("lookup_order", {"order_id": "A-1"})
    assert {t.name for t in tools.tools} >= {"lookup_order", "slow", "broken"}
    assert result.content[0].text == "order A-1: shipped"  # the SDK's own result, untouched
    (run_span,) = instrumented.spans("invoke_agent support")
    (span,) = instrumented.spans("execute_tool")  # listing made no tool span
    a = _attrs(span)
    assert span.name == "execute_tool lookup_order"
    assert a[A.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert a[A.GEN_AI_TOOL_NAME] == "lookup_order"
    assert a[A.TOOL_SERVER] == "orders"  # from the server's own serverInfo
    assert a[A.TOOL_SYSTEM] == "mcp" and a[A.GEN_AI_TOOL_TYPE] == "extension"
    assert a[A.READ_ONLY] is True  # the server's readOnlyHint, learned from tools/list
    assert a[A.PHASE] == "tool_execution"
    assert span.parent.span_id == run_span.context.span_id
    assert span.status.status_code is not StatusCode.ERROR
    assert run.usage.tool_calls == 1 and run.usage.tools_finished == 1
    assert run.partial["tool_results"] == [{"tool": "lookup_order", "result": result}]
    assert _attrs(run_span)[A.USAGE_PREFIX + "tool_calls"] == 1


async def test_error_result_is_an_error_span_not_a_finished_tool(instrumented: Tracing) -> None:
    async with connect() as session, budgetspan.run("support") as run:
        result = await session.call_tool("broken", {"reason": "db down"})
    assert result.is_error  # returned to the caller as the SDK returns it, not raised
    (span,) = instrumented.spans("execute_tool broken")
    assert span.status.status_code is StatusCode.ERROR
    assert _attrs(span)[A.ERROR_TYPE] == "error"
    assert A.READ_ONLY not in _attrs(span)  # not marked read-only by the server
    assert run.usage.tool_calls == 1 and run.usage.tools_finished == 0
    assert run.partial["tool_results"] == []


async def test_timeout_cancels_the_request_and_is_recorded(instrumented: Tracing, tool_config: None) -> None:
    async with connect() as session:
        async with budgetspan.run("support") as run:
            with pytest.raises(budgetspan.ToolTimeout) as info:
                await session.call_tool("slow", {"seconds": 30})
            # The session is still usable after the cancelled request.
            after = await session.call_tool("lookup_order", {"order_id": "A-2"})
        journal: list[str] = []
        for _ in range(100):  # the cancel notification reaches the server asynchronously
            journal = await _seen(session)
            if "slow cancelled" in journal:
                break
            await asyncio.sleep(0.02)
    assert info.value.tool == "slow" and info.value.timeout_s == 0.3
    assert after.content[0].text == "order A-2: shipped"
    assert "slow cancelled" in journal and "slow finished" not in journal
    (span,) = instrumented.spans("execute_tool slow")
    a = _attrs(span)
    assert a[A.TOOL_TIMED_OUT] is True and a[A.TOOL_TIMEOUT_S] == 0.3
    assert a[A.ERROR_TYPE] == "ToolTimeout"
    assert span.status.status_code is StatusCode.ERROR
    assert run.usage.tool_calls == 2 and run.usage.tools_finished == 1
    assert run.outcome is budgetspan.Outcome.SUCCESS  # a tool timeout is not a budget stop


async def test_tool_over_max_calls_is_refused_before_it_is_sent(
    instrumented: Tracing, tool_config: None
) -> None:
    async with connect() as session:
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            async with budgetspan.run("support") as run:
                await session.call_tool("lookup_order", {"order_id": "A-1"})
                await session.call_tool("lookup_order", {"order_id": "A-2"})
        journal = await _seen(session)
    assert info.value.reason == budgetspan.Limit.TOOL_MAX_CALLS.value and info.value.tool == "lookup_order"
    assert journal == ["lookup_order A-1"]  # the second request never reached the server
    assert len(instrumented.spans("execute_tool lookup_order")) == 1
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED
    assert run.partial["tool_results"][0]["tool"] == "lookup_order"


async def test_langchain_tool_forwarding_to_mcp_is_one_tool_call(instrumented: Tracing) -> None:
    """MCP adapters wrap each MCP tool as a LangChain tool of the same name: count it once."""
    from langchain_core.tools import StructuredTool

    lc = LangChainInstrumentor()
    lc.instrument()
    try:
        async with connect() as session:

            async def lookup_order(order_id: str) -> str:
                result = await session.call_tool("lookup_order", {"order_id": order_id})
                return str(result.content[0].text)

            tool = StructuredTool.from_function(
                coroutine=lookup_order, name="lookup_order", description="Status of one order."
            )
            async with budgetspan.run("support") as run:
                answer = await tool.ainvoke({"order_id": "A-7"})
    finally:
        lc.uninstrument()
    assert answer == "order A-7: shipped"
    (span,) = instrumented.spans("execute_tool")
    a = _attrs(span)
    assert a[A.TOOL_SYSTEM] == "langchain" and a[A.TOOL_SERVER] == "orders"
    assert run.usage.tool_calls == 1 and run.usage.tools_finished == 1


async def test_in_process_server_span_is_not_a_second_tool_call(
    instrumented: Tracing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MCP server SDK makes its own ``execute_tool`` SERVER span (on by default). With the
    server in the same process (the in-memory ``Client(server)``), that span is the far side of
    the call budgetspan already counted: the budget processor must not count it again."""
    import mcp.shared._otel as mcp_otel
    from mcp.client.client import Client

    from tests.mcp_server import server

    monkeypatch.setattr(mcp_otel, "_tracer", instrumented.provider.get_tracer("mcp-python-sdk"))
    async with Client(server) as client, budgetspan.run("support") as run:
        await client.list_tools()
        result = await client.call_tool("lookup_order", {"order_id": "B-1"})
    assert result.content[0].text == "order B-1: shipped"
    (ours,) = instrumented.spans("execute_tool lookup_order")
    (theirs,) = instrumented.spans("tools/call lookup_order")
    assert _attrs(theirs)[A.GEN_AI_OPERATION_NAME] == "execute_tool"  # the server SDK's span
    assert theirs.parent.span_id == ours.context.span_id
    assert run.usage.tool_calls == 1
    assert _attrs(ours)[A.TOOL_SERVER] == "orders" and _attrs(ours)[A.READ_ONLY] is True
