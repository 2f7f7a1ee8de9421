"""MCP (``mcp``): ``ClientSession.call_tool`` (and ``Client.call_tool``) as a budgeted
``execute_tool {tool}`` call.

The span names the server (``budgetspan.tool.server``, from the server's own ``serverInfo``), is
counted against the tool budget before the request is sent, and gets the tool's timeout from the
configuration (``[tools.NAME]``): past it the request is cancelled (the SDK tells the server) and
the call is recorded with status ``timeout``. A result with ``isError`` is an error span and not a
finished tool. Listing tools or resources is not a tool call: ``list_tools`` is only read to learn
which tools the server marks read-only (``readOnlyHint``), so those calls carry
``budgetspan.read_only`` and sequential independent reads can be found later.

A server may ask the client for work while a tool call runs (sampling: a model call; elicitation,
roots). The SDK answers in its receive loop, a task started with the session, often before the
run: its context is not the run's. Each tool call in flight notes its context on its session,
and the server's request is answered in that context (the latest call's, when several of one
session are in flight: the request does not say which call it serves), so a sampling model call
is counted in the run, under the tool's span (was: charged to the process, 3 sent under
``max_model_calls=1``). A call whose run stopped at a limit meanwhile (its sampling refused, the
server answering with an error result) raises the run's ``BudgetExhausted``.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from budgetspan import attributes as A
from budgetspan.events import internal_error
from budgetspan.instrumentation.agents import raise_refusal, stopped_run
from budgetspan.instrumentation.patch_table import PatchInstrumentor
from budgetspan.instrumentation.retrieval import arg, atraced_tool

SYSTEM = "mcp"

# session -> {tool name: read-only hint}, learned from the session's own tools/list answers
_read_only: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()
# session -> the contexts of its tool calls in flight, oldest first (the runs its server serves)
_serving: weakref.WeakKeyDictionary[Any, list[contextvars.Context]] = weakref.WeakKeyDictionary()


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
    return _raise_if_stopped(
        atraced_tool(
            _serving_call(wrapped, session),
            args,
            kwargs,
            name=name,
            system=SYSTEM,
            tool_type=A.TOOL_TYPE_EXTENSION,
            server=_server_name(session),
            read_only=read_only,
            is_error=_is_error,
            arguments=((), {"arguments": arg(args, kwargs, 1, "arguments")}),
        )
    )


async def _raise_if_stopped(call: Awaitable[Any]) -> Any:
    """The tool's result, or the run's ``BudgetExhausted`` for a call that failed (an error
    result, an ``MCPError``) after its run stopped at a limit while it ran (the server's sampling
    request was refused: the server answers with an error); an error carrying a refusal raises
    that refusal (``agents.raise_refusal``, as the framework wrappers do)."""
    try:
        result = await call
    except Exception as error:
        raise_refusal(error)
        raise
    if _is_error(result):
        stopped = stopped_run()
        if stopped is not None:
            raise stopped
    return result


def _serving_call(wrapped: Callable[..., Awaitable[Any]], session: Any) -> Callable[..., Awaitable[Any]]:
    """``wrapped``, noting on ``session`` the context it runs in (the tool call's, inside its span)
    until it returns."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        context = contextvars.copy_context()
        try:
            _serving.setdefault(session, []).append(context)
        except Exception:
            internal_error("mcp serving call")
        try:
            return await wrapped(*args, **kwargs)
        finally:
            try:
                _serving.get(session, []).remove(context)
            except Exception:
                internal_error("mcp serving call")

    return call


def _dispatch_input_request(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A server's request to the client (sampling, elicitation, roots), answered in the context of
    the session's tool call in flight."""
    try:
        calls = _serving.get(instance)
        context = calls[-1] if calls else None
        asyncio.get_running_loop()  # (trio via anyio: answered as it comes)
    except Exception:  # RuntimeError: no asyncio loop
        context = None
    if context is None:
        return wrapped(*args, **kwargs)
    return _answer_in(context.copy(), wrapped, args, kwargs)


async def _answer_in(context: contextvars.Context, wrapped: Any, args: Any, kwargs: Any) -> Any:
    return await asyncio.get_running_loop().create_task(wrapped(*args, **kwargs), context=context)


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
        ("mcp.client.session", "ClientSession.dispatch_input_request", _dispatch_input_request),
    )
