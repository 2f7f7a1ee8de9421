"""MCP tools under budgets as agents use them (attack 19): a real MCP server over stdio
(tests/mcp_server.py), the real ``ClientSession``, the real ``openai`` SDK against the scripted chat
server for the model calls the MCP server asks the client for (sampling).

What a bug would break, and where it is seen: the requests that reached the servers (counted
there), ``run.usage``, the spans' parents, and the exception the caller gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import mcp_types
import openai
import pytest

import budgetspan
from budgetspan.instrumentation.mcp import MCPInstrumentor
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.conftest import Tracing, instrumentors_on
from tests.instrumentation.chat_server import ChatServer
from tests.mcp_server import connect


@pytest.fixture
def instrumented(tracing: Tracing) -> Iterator[Tracing]:
    with instrumentors_on(MCPInstrumentor(), OpenAIInstrumentor()):
        yield tracing


def _sampler(chat_server: ChatServer, model: str) -> Callable[..., Any]:
    """The client's sampling callback: each request of the server is one chat completion."""
    client = openai.AsyncOpenAI(
        base_url=chat_server.base_url, api_key="test", max_retries=0, http_client=httpx.AsyncClient()
    )

    async def sampling(context: Any, params: Any) -> Any:
        answer = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": params.messages[0].content.text}],
            max_tokens=20,
        )
        text = mcp_types.TextContent(type="text", text=answer.choices[0].message.content or "")
        return mcp_types.CreateMessageResult(role="assistant", content=text, model=model)

    return sampling


async def _seen(session: Any) -> list[str]:
    result = await session.call_tool("seen", {})
    return list((result.structured_content or {}).get("result", []))


async def test_sampling_during_a_tool_call_is_charged_to_the_run(
    instrumented: Tracing, chat_server: ChatServer, tag: str
) -> None:
    """The server's model requests are answered in the session's receive loop, a task started
    with the session (before the run): they were charged to the process, not the run (3 sent
    under ``max_model_calls=1``, the run saw 0)."""
    model = f"fake-r1-{tag}"
    async with connect(sampling_callback=_sampler(chat_server, model)) as session:
        async with budgetspan.run("support", max_model_calls=5) as run:
            result = await session.call_tool("summarize", {"text": "order A-1", "times": 3})
    assert not result.is_error
    assert len(chat_server.for_model(model)) == 3
    assert run.usage.model_calls == 3 and run.usage.tool_calls == 1
    (tool_span,) = instrumented.spans("execute_tool summarize")
    chats = instrumented.spans("chat ")
    assert len(chats) == 3
    assert all(s.parent is not None and s.parent.span_id == tool_span.context.span_id for s in chats)


async def test_sampling_over_max_model_calls_is_refused_and_stops_the_call(
    instrumented: Tracing, chat_server: ChatServer, tag: str
) -> None:
    model = f"fake-r1-{tag}"
    async with connect(sampling_callback=_sampler(chat_server, model)) as session:
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            async with budgetspan.run("support", max_model_calls=1) as run:
                await session.call_tool("summarize", {"text": "order A-1", "times": 3})
    assert len(chat_server.for_model(model)) == 1  # was 3
    assert info.value.reason == "max_model_calls"
    assert run.usage.model_calls == 1
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


async def test_concurrent_calls_at_the_limit_send_exactly_the_limit(instrumented: Tracing) -> None:
    async with connect() as session:
        before = len(await _seen(session))
        async with budgetspan.run("support", max_tool_calls=3, suppress_exhausted=True) as run:
            results = await asyncio.gather(
                *(session.call_tool("lookup_order", {"order_id": f"A-{i}"}) for i in range(7)),
                return_exceptions=True,
            )
        sent = len(await _seen(session)) - before
    assert sent == 3 and run.usage.tool_calls == 3
    assert sum(isinstance(r, budgetspan.BudgetExhausted) for r in results) == 4
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


async def test_async_on_limit_policy_is_awaited_on_the_callers_loop(instrumented: Tracing) -> None:
    """An approval that arrives on the caller's event loop (another task sets it) extends the run:
    the policy was run on an event loop of its own in another thread (the caller's loop blocked),
    where it could not await the caller's event: the call was refused."""
    approved = asyncio.Event()
    loops: list[bool] = []
    caller = asyncio.get_running_loop()

    async def policy(reached: budgetspan.LimitReached) -> budgetspan.Decision:
        loops.append(asyncio.get_running_loop() is caller)
        asyncio.get_running_loop().call_later(0.05, approved.set)  # a reviewer, on this loop
        await asyncio.wait_for(approved.wait(), 5)
        return budgetspan.Extend(max_tool_calls=1, reason="approval")

    async with connect() as session:
        async with budgetspan.run("support", max_tool_calls=1, on_limit=policy) as run:
            await session.call_tool("lookup_order", {"order_id": "A-1"})
            second = await session.call_tool("lookup_order", {"order_id": "A-2"})
    assert loops == [True]
    assert second.content[0].text == "order A-2: shipped"
    assert run.usage.tool_calls == 2 and run.outcome is budgetspan.Outcome.SUCCESS


async def test_max_repeated_calls_stops_an_mcp_tool_loop(instrumented: Tracing) -> None:
    """The same MCP call with the same result again and again is a loop: the third is refused
    before it is sent (was: loops were watched for ``@budgetspan.tool`` functions only, 5 of 5 sent)."""
    async with connect() as session:
        before = len(await _seen(session))
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            async with budgetspan.run("support", max_repeated_calls=3) as run:
                for _ in range(5):
                    await session.call_tool("lookup_order", {"order_id": "A-1"})
        sent = len(await _seen(session)) - before
    assert sent == 2
    assert info.value.reason == "no_progress" and run.usage.tool_calls == 2


async def test_max_repeated_calls_lets_calls_with_new_arguments_through(instrumented: Tracing) -> None:
    async with connect() as session, budgetspan.run("support", max_repeated_calls=2) as run:
        for i in range(4):
            await session.call_tool("lookup_order", {"order_id": f"A-{i}"})
    assert run.usage.tool_calls == 4 and run.outcome is budgetspan.Outcome.SUCCESS


async def test_concurrent_sampling_calls_send_exactly_the_limit(
    instrumented: Tracing, chat_server: ChatServer, tag: str
) -> None:
    """Three tool calls in parallel, each asking for 2 model calls, under ``max_model_calls=4``."""
    model = f"fake-r1-{tag}"
    async with connect(sampling_callback=_sampler(chat_server, model)) as session:
        async with budgetspan.run("support", max_model_calls=4, suppress_exhausted=True) as run:
            results = await asyncio.gather(
                *(session.call_tool("summarize", {"text": f"order A-{i}", "times": 2}) for i in range(3)),
                return_exceptions=True,
            )
    assert len(chat_server.for_model(model)) == 4 and run.usage.model_calls == 4
    assert sum(isinstance(r, budgetspan.BudgetExhausted) for r in results) >= 1
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


def _prefixed_tool(session: Any) -> Any:
    """A LangChain tool named as langchain-mcp-adapters names it with ``tool_name_prefix=True``
    (``{server}_{tool}``), calling the MCP tool ``lookup_order`` (the adapter is not installed)."""
    from langchain_core.tools import StructuredTool

    async def lookup_order(order_id: str) -> str:
        result = await session.call_tool("lookup_order", {"order_id": order_id})
        return str(result.content[0].text)

    return StructuredTool.from_function(
        coroutine=lookup_order, name="orders_lookup_order", description="Status of one order."
    )


async def test_prefixed_adapter_tool_forwarding_to_mcp_is_one_tool_call(instrumented: Tracing) -> None:
    """langchain-mcp-adapters' ``MultiServerMCPClient(..., tool_name_prefix=True)`` names each
    LangChain tool ``{server}_{tool}``: the MCP call inside it is the same call, counted once
    (was: counted twice, so ``max_tool_calls=2`` let 1 of 2 calls through)."""
    from budgetspan.instrumentation.langchain import LangChainInstrumentor

    with instrumentors_on(LangChainInstrumentor()):
        async with connect() as session:
            tool = _prefixed_tool(session)
            before = len(await _seen(session))
            async with budgetspan.run("support", max_tool_calls=2) as run:
                answers = [await tool.ainvoke({"order_id": f"A-{i}"}) for i in range(2)]
            sent = len(await _seen(session)) - before
    assert answers == ["order A-0: shipped", "order A-1: shipped"] and sent == 2
    assert run.usage.tool_calls == 2 and run.usage.tools_finished == 2
    spans = instrumented.spans("execute_tool orders_lookup_order")
    assert len(spans) == 2 and instrumented.spans("execute_tool lookup_order") == []
    assert all(dict(s.attributes or {})["budgetspan.tool.server"] == "orders" for s in spans)


async def test_mcp_tools_cap_holds_through_a_prefixed_adapter_tool(
    instrumented: Tracing, config_file: Callable[[str], None]
) -> None:
    """``[tools.lookup_order]`` (the MCP tool's own name) still holds through a prefixed adapter
    tool: such a call is not folded, its cap applies (and it counts as a second tool call)."""
    from budgetspan.instrumentation.langchain import LangChainInstrumentor

    config_file("[tools.lookup_order]\nmax_calls = 1\n")
    with instrumentors_on(LangChainInstrumentor()):
        async with connect() as session:
            tool = _prefixed_tool(session)
            before = len(await _seen(session))
            async with budgetspan.run("support"):
                await tool.ainvoke({"order_id": "A-0"})
                with pytest.raises(budgetspan.BudgetExhausted):
                    await tool.ainvoke({"order_id": "A-1"})
            sent = len(await _seen(session)) - before
    assert sent == 1
