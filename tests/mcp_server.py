"""A real MCP server for the tests, spoken to over stdio (``python tests/mcp_server.py``).

Tools: ``lookup_order`` (a quick read), ``slow`` (sleeps, to be timed out), ``broken`` (returns an
error result, ``isError``), plus one resource, so listing is exercised too.
"""

from __future__ import annotations

import asyncio

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("orders")


@server.tool()
def lookup_order(order_id: str) -> str:
    """Status of one order."""
    return f"order {order_id}: shipped"


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer: a tool that can run past its timeout."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def broken(reason: str) -> str:
    """Always fails: the server answers with an error result."""
    raise ToolError(f"broken: {reason}")


@server.resource("orders://recent")
def recent_orders() -> str:
    return "A-1, A-2"


if __name__ == "__main__":
    server.run("stdio")
