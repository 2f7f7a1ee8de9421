"""Shared wrappers for the retriever and tool-client instrumentations.

Retrievals (LangChain, LlamaIndex, Chroma, Qdrant) become ``retrieval {source}`` spans in the
``context_assembly`` phase with the number of documents returned. A retrieval that runs inside
another one (a LangChain retriever over a Chroma collection) is the same logical read: it is
folded into the outer span (named in ``budgetspan.retrieval.nested_systems``), never a second span.

Tool calls (LangChain tools, MCP ``call_tool``) are ``execute_tool {name}`` calls counted against
the tool budget *before* they run, with the per-tool timeout and retry limits of the run's budget
(``[tools.NAME]`` in the configuration). A tool call inside a tool call *of the same name* (a
LangChain tool that forwards to an MCP server, as MCP adapters do) is the same call: it is counted
once, and the outer span gets the server's name.

Only BudgetExhausted / RunCancelled are raised on purpose; the rest of our own errors are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypedDict, Unpack

from opentelemetry.trace import SpanKind

from budgetspan import attributes as A
from budgetspan.accounting.budget import ToolLimits
from budgetspan.calls.call import Call
from budgetspan.calls.tools import arun_tool, loop_step, run_tool, tool_call
from budgetspan.events import internal_error
from budgetspan.instrumentation.patch_table import suppressed

log = logging.getLogger(__name__)

_retrieval: ContextVar[Call | None] = ContextVar("budgetspan_retrieval", default=None)
_tool: ContextVar[Call | None] = ContextVar("budgetspan_instrumented_tool", default=None)

Counter = Callable[[Any], int | None]
AsyncMethod = Callable[..., Awaitable[Any]]
Source = Callable[[], str]  # a retrieval's data source, named only when a span is made


def _bounded(call: Call, timeout_s: float | None = None) -> contextlib.AbstractAsyncContextManager[None]:
    """``call.deadline`` on asyncio; on another event loop (trio via anyio) no bound at all,
    rather than an error in the user's call."""
    try:
        asyncio.current_task()
    except RuntimeError:
        return _unbounded()
    return call.deadline(timeout_s)


@contextlib.asynccontextmanager
async def _unbounded() -> AsyncIterator[None]:
    yield


# --- retrievals ---------------------------------------------------------------------------------


def retrieval_call(source: str, system: str) -> Call:
    """A not-yet-started retrieval ``Call`` (not counted in the ledger; the run's limits are checked)."""
    attrs: dict[str, Any] = {
        A.GEN_AI_DATA_SOURCE_ID: source,
        A.RETRIEVAL_SYSTEM: system,
        A.READ_ONLY: True,
    }
    return Call(A.OP_RETRIEVAL, A.SPAN_RETRIEVAL.format(source=source), attrs, span_kind=SpanKind.INTERNAL)


def _fold(outer: Call, system: str) -> None:
    """Name an inner retrieval's system on the outer span (once each)."""
    try:
        if outer.span is None or system == outer.attributes.get(A.RETRIEVAL_SYSTEM):
            return
        nested = list(outer.attributes.get(A.RETRIEVAL_NESTED_SYSTEMS, ()))
        if system not in nested:
            nested.append(system)
            outer.attributes[A.RETRIEVAL_NESTED_SYSTEMS] = tuple(nested)
            outer.span.set_attribute(A.RETRIEVAL_NESTED_SYSTEMS, nested)
    except Exception:
        internal_error("retrieval fold")


def _finish_retrieval(call: Call, result: Any, count: Counter, t0: float) -> None:
    try:
        call.documents = count(result)
        if call.span is not None:
            call.span.set_attribute(A.RETRIEVAL_QUERY_S, time.monotonic() - t0)
    except Exception:
        internal_error("retrieval result")
    call.end()


def _begin_retrieval(source: Callable[[], str], system: str) -> Call | None:
    """A started retrieval call, or None to let the method through untouched: suppressed, folded
    into the enclosing retrieval, or our own setup failed. BudgetExhausted propagates: a run at its
    limit does no more work."""
    if suppressed():
        return None
    outer = _retrieval.get()
    if outer is not None:
        _fold(outer, system)
        return None
    try:
        call = retrieval_call(source(), system)
    except Exception:
        internal_error("retrieval setup")
        return None
    call.start()
    return call


@contextlib.contextmanager
def _retrieving(call: Call) -> Iterator[None]:
    """The retrieval as the current one (inner ones fold into it); ended with the error on failure."""
    token = _retrieval.set(call)
    try:
        with call.activate():
            yield
    except BaseException as e:
        call.end(e)
        raise
    finally:
        _retrieval.reset(token)


def traced_retrieval(
    wrapped: Callable[..., Any], args: Any, kwargs: Any, *, source: Source, system: str, count: Counter
) -> Any:
    """Run a synchronous retrieval inside a ``retrieval`` span (or fold it into the enclosing one)."""
    call = _begin_retrieval(source, system)
    if call is None:
        return wrapped(*args, **kwargs)
    t0 = time.monotonic()
    with _retrieving(call):
        result = wrapped(*args, **kwargs)
    _finish_retrieval(call, result, count, t0)
    return result


async def atraced_retrieval(
    wrapped: AsyncMethod, args: Any, kwargs: Any, *, source: Source, system: str, count: Counter
) -> Any:
    """The async twin of :func:`traced_retrieval`; bounded by the run's remaining wall-clock time."""
    call = _begin_retrieval(source, system)
    if call is None:
        return await wrapped(*args, **kwargs)
    t0 = time.monotonic()
    with _retrieving(call):
        async with _bounded(call):
            result = await wrapped(*args, **kwargs)
    _finish_retrieval(call, result, count, t0)
    return result


def retrieval_wrapper(
    source: Callable[[Any, Any, Any], str], system: str, count: Counter, asynchronous: bool
) -> Callable[..., Any]:
    """A patch-table wrapper: the method runs as a retrieval of ``source(instance, args, kwargs)``
    (called only when a span is made)."""
    traced = atraced_retrieval if asynchronous else traced_retrieval

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        def source_name() -> str:
            return source(instance, args, kwargs)

        return traced(wrapped, args, kwargs, source=source_name, system=system, count=count)

    return wrapper


# --- tools --------------------------------------------------------------------------------------


def _same_tool(name: str, server: str | None) -> Call | None:
    """The enclosing instrumented tool call if it is this same tool (counted once), else None.
    An MCP tool (one with a ``server``) is also the same as an enclosing tool named
    ``{prefix}_{name}``, as langchain-mcp-adapters names its tools with ``tool_name_prefix=True``
    (was: counted twice, ``max_tool_calls=2`` let 1 of 2 adapter calls through), unless the run
    has per-tool limits (``[tools.NAME]``) for the MCP name itself: those hold only on a call
    counted under that name, so it is counted again (stricter, never looser)."""
    outer = _tool.get()
    if outer is None or outer.tool is None:
        return None
    if outer.tool != name and not (
        server and outer.tool.endswith("_" + name) and not _own_limits(outer, name)
    ):
        return None
    if server:
        try:
            outer.attributes[A.TOOL_SERVER] = server
            if outer.span is not None:
                outer.span.set_attribute(A.TOOL_SERVER, server)
        except Exception:
            internal_error("tool fold")
    return outer


def _own_limits(outer: Call, name: str) -> bool:
    """Whether the run of ``outer`` (or an enclosing run) has per-tool limits for ``name``."""
    run = outer.run
    try:
        while run is not None:
            if run.budget.tool_limits(name) != ToolLimits():
                return True
            run = run.parent
    except Exception:
        internal_error("tool fold limits")
        return True
    return False


class ToolHow(TypedDict, total=False):
    """How an instrumented tool call is described, beyond its name and system (keyword arguments
    of :func:`traced_tool` and :func:`atraced_tool`). ``is_error`` tells an error *result* (the tool
    answered, but with a failure) from a success; ``partial`` picks what of a successful result goes
    into the run's partial results (a framework's result wrapper holds the tool's own output).
    ``arguments`` (args, kwargs: the tool's own, no per-call ids) make the call's signature for the
    run's loop watch (``max_repeated_calls``, ``max_steps_without_progress``), and ``progress``
    picks what of a result is compared there (default: all of it); without ``arguments`` the
    call is not watched."""

    tool_type: str
    server: str | None
    call_id: str | None
    read_only: bool
    is_error: Callable[[Any], bool] | None
    partial: Callable[[Any], Any] | None
    arguments: tuple[Any, Any] | None
    progress: Callable[[Any], Any] | None


def _new_tool(name: str, system: str, how: ToolHow) -> Call | None:
    """A tool call to start, or None to let the tool through untouched (suppressed, or the same
    tool as the enclosing call)."""
    server = how.get("server")
    if suppressed() or _same_tool(name, server) is not None:
        return None
    call = tool_call(
        name,
        server=server,
        call_id=how.get("call_id"),
        read_only=how.get("read_only", False),
        arguments=how.get("arguments"),
    )
    call.attributes[A.TOOL_SYSTEM] = system
    call.attributes[A.GEN_AI_TOOL_TYPE] = how.get("tool_type", A.TOOL_TYPE_FUNCTION)
    return call


def _timeout(call: Call, name: str) -> float | None:
    """A started tool call's timeout (``[tools.NAME] timeout_s``), noted on its span."""
    limits = ToolLimits()
    try:
        if call.run is not None:
            limits = call.run.budget.tool_limits(name)
        if limits.timeout_s is not None and call.span is not None:
            call.span.set_attribute(A.TOOL_TIMEOUT_S, limits.timeout_s)
    except Exception:
        internal_error("tool limits")
    return limits.timeout_s


def _finish_tool(call: Call, name: str, result: Any, how: ToolHow) -> None:
    failed = False
    is_error = how.get("is_error")
    if is_error is not None:
        try:
            failed = bool(is_error(result))
        except Exception:
            internal_error("tool result")
    call.end(status="error" if failed else None)
    _loop_step(call, name, result, how)
    if not failed and call.run is not None:
        partial = how.get("partial")
        try:
            call.run.record_tool_result(name, partial(result) if partial is not None else result)
        except Exception:
            internal_error("tool partial result")


def _loop_step(call: Call, name: str, result: Any, how: ToolHow) -> None:
    """One step of the run's loop watch (a watched call only: its signature was taken at its start)."""
    if call.signature is None:
        return
    progress = how.get("progress")
    try:
        seen = progress(result) if progress is not None else result
    except Exception:
        internal_error("tool progress")
        return
    loop_step(call, name, seen)


def traced_tool(
    wrapped: Callable[..., Any], args: Any, kwargs: Any, *, name: str, system: str, **how: Unpack[ToolHow]
) -> Any:
    """Run a synchronous tool as one budgeted call: limits, timeout (abandoned thread), retries.
    BudgetExhausted propagates from the start: a tool over its limits never runs."""
    call = _new_tool(name, system, how)
    if call is None:
        return wrapped(*args, **kwargs)
    timeout_s = _timeout(call.start(), name)
    token = _tool.set(call)
    try:
        result = run_tool(call, name, timeout_s, wrapped, args, kwargs)
    except Exception as error:
        loop_step(call, name, error=error)
        raise
    finally:
        _tool.reset(token)
    _finish_tool(call, name, result, how)
    return result


async def atraced_tool(
    wrapped: AsyncMethod, args: Any, kwargs: Any, *, name: str, system: str, **how: Unpack[ToolHow]
) -> Any:
    """Run an async tool as one budgeted call; past its timeout it is cancelled (status timeout).
    Started with ``astart``: the run's async ``on_limit`` policy is awaited on the caller's event
    loop (was: run on a loop of its own in another thread, the caller's loop blocked meanwhile)."""
    call = _new_tool(name, system, how)
    if call is None:
        return await wrapped(*args, **kwargs)
    timeout_s = _timeout(await call.astart(), name)
    token = _tool.set(call)
    try:
        result = await arun_tool(call, name, timeout_s, wrapped, args, kwargs)
    except Exception as error:
        loop_step(call, name, error=error)
        raise
    finally:
        _tool.reset(token)
    _finish_tool(call, name, result, how)
    return result


def arg(args: Any, kwargs: Any, index: int, name: str) -> Any:
    """A call's argument by position or keyword (None when absent)."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None
