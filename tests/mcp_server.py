"""A real MCP server for the tests, spoken to over stdio (``python tests/mcp_server.py``).

Tools: ``lookup_order`` (a quick read, marked read-only), ``slow`` (sleeps; can be timed out and
cancelled), ``broken`` (answers with an error result, ``isError``), ``seen`` (what the server has
executed so far, so a test can prove a refused call never reached it and a timed-out one was
cancelled here), ``summarize`` (asks the client's model, by MCP sampling, ``times`` times during
the one tool call), plus one resource, so listing is exercised too.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import SamplingMessage, TextContent, ToolAnnotations

server = MCPServer("orders")
journal: list[str] = []


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def lookup_order(order_id: str) -> str:
    """Status of one order."""
    journal.append(f"lookup_order {order_id}")
    return f"order {order_id}: shipped"


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer: a tool that can run past its timeout."""
    journal.append("slow started")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        journal.append("slow cancelled")
        raise
    journal.append("slow finished")
    return f"slept {seconds}"


@server.tool()
def broken(reason: str) -> str:
    """Always fails: the server answers with an error result."""
    journal.append("broken")
    raise ToolError(f"broken: {reason}")


@server.tool()
async def summarize(text: str, times: int, ctx: Context) -> str:
    """Ask the client's model ``times`` times (MCP sampling) while this one tool call runs."""
    journal.append("summarize")
    answers = []
    for i in range(times):
        question = SamplingMessage(role="user", content=TextContent(type="text", text=f"{text} ({i})"))
        answer = await ctx.request_context.session.create_message([question], max_tokens=20)
        answers.append(str(getattr(answer.content, "text", "")))
    return " | ".join(answers)


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def seen() -> list[str]:
    """The tools this server has executed, in order."""
    return list(journal)


@server.resource("orders://recent")
def recent_orders() -> str:
    return "A-1, A-2"


@asynccontextmanager
async def connect(**session_options: Any) -> AsyncIterator[Any]:
    """Start this server as a subprocess and yield an initialized client session to it
    (``session_options``: the ``ClientSession``'s, e.g. a ``sampling_callback``)."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=[os.path.abspath(__file__)])
    with open(os.devnull, "w") as errlog:  # the server's own INFO logging
        async with (
            stdio_client(params, errlog=errlog) as streams,
            ClientSession(*streams, **session_options) as session,
        ):
            await session.initialize()
            yield session


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")  # sampling is deprecated by the 2026-07-28 protocol, still served
    server.run("stdio")
