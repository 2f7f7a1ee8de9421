"""A real MCP server for the tests, spoken to over stdio (``python tests/mcp_server.py``).

Tools: ``lookup_order`` (a quick read, marked read-only), ``slow`` (sleeps; can be timed out and
cancelled), ``broken`` (answers with an error result, ``isError``), ``seen`` (what the server has
executed so far, so a test can prove a refused call never reached it and a timed-out one was
cancelled here), plus one resource, so listing is exercised too.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

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


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def seen() -> list[str]:
    """The tools this server has executed, in order."""
    return list(journal)


@server.resource("orders://recent")
def recent_orders() -> str:
    return "A-1, A-2"


@asynccontextmanager
async def connect() -> AsyncIterator[Any]:
    """Start this server as a subprocess and yield an initialized client session to it."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=[os.path.abspath(__file__)])
    with open(os.devnull, "w") as errlog:  # the server's own INFO logging
        async with stdio_client(params, errlog=errlog) as streams, ClientSession(*streams) as session:
            await session.initialize()
            yield session


if __name__ == "__main__":
    server.run("stdio")
