"""MCP (``mcp``): ``ClientSession.call_tool`` (and ``Client.call_tool``) as a budgeted
``execute_tool {tool}`` call.

The span names the server (``budgetspan.tool.server``, from the server's own ``serverInfo``), is
counted against the tool budget before the request is sent, and gets the tool's timeout from the
configuration (``[tools.NAME]``): past it the request is cancelled (the SDK tells the server) and
the call is recorded with status ``timeout``. A result with ``isError`` is an error span and not a
finished tool. Listing tools or resources is not a tool call: ``list_tools`` is only read to learn
which tools the server marks read-only (``readOnlyHint``), so those calls carry
``budgetspan.read_only`` and sequential independent reads can be found later.
"""

from __future__ import annotations

import weakref
from typing import Any

from budgetspan import attributes as A
from budgetspan.events import internal_error
from budgetspan.instrumentation.patch_table import PatchInstrumentor
from budgetspan.instrumentation.retrieval import arg, atraced_tool

SYSTEM = "mcp"

# session -> {tool name: read-only hint}, learned from the session's own tools/list answers
_read_only: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()


def _server_name(session: Any) -> str | None:
    try:
        info = getattr(session, "server_info", None)
        name = getattr(info, "name", None)
        return str(name) if name else None
    except Exception:
        return None


def _is_error(result: Any) -> bool:
    flag = getattr(result, "is_error", None)
    if flag is None:
        flag = getattr(result, "isError", False)  # mcp 1.x
    return bool(flag)


def _call_tool(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return _traced_call(wrapped, instance, args, kwargs)


def _client_call_tool(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Client.call_tool`` is one logical call even when it takes several ``tools/call`` rounds
    (input-required rounds, a resend after a header mismatch): the session's rounds inside it
    have the same tool name and are folded into it."""
    try:
        session = instance.session
    except Exception:  # not connected: the SDK raises its own error
        return wrapped(*args, **kwargs)
    return _traced_call(wrapped, session, args, kwargs)


def _traced_call(wrapped: Any, session: Any, args: Any, kwargs: Any) -> Any:
    name = str(arg(args, kwargs, 0, "name") or "unknown")
    read_only = False
    try:
        read_only = _read_only.get(session, {}).get(name, False)
    except Exception:
        internal_error("mcp read-only hint")
    return atraced_tool(
        wrapped,
        args,
        kwargs,
        name=name,
        system=SYSTEM,
        tool_type=A.TOOL_TYPE_EXTENSION,
        server=_server_name(session),
        read_only=read_only,
        is_error=_is_error,
    )


def _remember_hints(session: Any, result: Any) -> None:
    try:
        hints = _read_only.setdefault(session, {})
        for tool in getattr(result, "tools", None) or ():
            annotations = getattr(tool, "annotations", None)
            hint = getattr(annotations, "read_only_hint", None)
            if hint is None:
                hint = getattr(annotations, "readOnlyHint", None)
            hints[str(tool.name)] = bool(hint)
    except Exception:
        internal_error("mcp list_tools")


def _list_tools(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    async def listing() -> Any:
        result = await wrapped(*args, **kwargs)
        _remember_hints(instance, result)
        return result

    return listing()


class MCPInstrumentor(PatchInstrumentor):
    """Tool calls of the ``mcp`` client session."""

    DEPENDENCIES = ("mcp >= 1.0",)
    PATCHES = (
        ("mcp.client.session", "ClientSession.call_tool", _call_tool),
        ("mcp.client.client", "Client.call_tool", _client_call_tool),
        ("mcp.client.session", "ClientSession.list_tools", _list_tools),
    )
