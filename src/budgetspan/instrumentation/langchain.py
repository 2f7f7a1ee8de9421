"""LangChain (``langchain-core``): retrievers as ``retrieval`` spans, tools as budgeted tool calls.

- ``BaseRetriever.invoke`` / ``ainvoke``: one ``retrieval {name}`` span (the retriever's name, or
  the vector store's class for a vector-store retriever), documents counted.
- ``BaseTool.run`` / ``arun``: one ``execute_tool {tool name}`` call counted against the tool
  budget before it runs, with the tool's timeout and retries from the configuration
  (``[tools.NAME]``). ``invoke`` / ``ainvoke`` go through ``run`` / ``arun``, so wrapping only the
  latter counts each call once whichever entry point the agent used. A tool that handles its own
  error (``handle_tool_error``) answers with an error ``ToolMessage``: the span is marked an error.
  A tool whose ``metadata`` says ``read_only`` (or carries MCP's ``readOnlyHint``, as MCP adapters
  copy it) is marked ``budgetspan.read_only``, so sequential independent reads can be found.
  A tool made from an ``@budgetspan.tool`` function is left to that decorator (counted once).
  A LangGraph handoff tool (``transfer_to_*``) is a handoff event, not a tool call (``langgraph.py``).
- Chat models are deliberately *not* wrapped. Money is spent where the provider SDK sends the
  request, and the OpenAI / Anthropic instrumentations make that span; a second span at the
  LangChain layer would double every model call. A LangChain model with no instrumented SDK
  underneath (a fake model in tests, a provider budgetspan does not instrument) therefore makes
  no model span and is not counted as a model call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from budgetspan.calls import tools as budgetspan_tools
from budgetspan.instrumentation.langgraph import handoff_destination, note_handoff
from budgetspan.instrumentation.patch_table import PatchInstrumentor
from budgetspan.instrumentation.retrieval import atraced_tool, retrieval_wrapper, traced_tool

SYSTEM = "langchain"


def _count(result: Any) -> int | None:
    return len(result) if isinstance(result, list) else None


def _retriever_name(instance: Any, *_: Any) -> str:
    """The vector store's class for a vector-store retriever (they all share one class), else
    the retriever's own name."""
    store = getattr(instance, "vectorstore", None)
    if store is not None:
        return type(store).__name__
    try:
        return str(instance.get_name())
    except Exception:
        return type(instance).__name__


def _is_error_message(result: Any) -> bool:
    return getattr(result, "type", None) == "tool" and getattr(result, "status", None) == "error"


_READ_ONLY_KEYS = ("read_only", "readOnlyHint", "read_only_hint")


def _read_only(instance: Any) -> bool:
    """``metadata={"read_only": True}``, or the MCP ``readOnlyHint`` that MCP adapters copy there."""
    metadata = getattr(instance, "metadata", None)
    if not isinstance(metadata, dict):
        return False
    return any(metadata.get(key) is True for key in _READ_ONLY_KEYS)


def _budgeted_already(instance: Any) -> bool:
    """A LangChain tool made from an ``@budgetspan.tool`` function is a budgeted call already
    (with that decorator's limits): wrapping it again would count it twice."""
    for attr in ("func", "coroutine"):
        code = getattr(getattr(instance, attr, None), "__code__", None)
        if code is not None and code.co_filename == _TOOLS_FILE and code.co_name in _TOOL_WRAPPERS:
            return True
    return False


_TOOLS_FILE = budgetspan_tools.__file__
_TOOL_WRAPPERS = ("wrapper", "awrapper")


def _tool_name(instance: Any) -> str:
    return str(getattr(instance, "name", None) or type(instance).__name__)


def _tool_input(args: Any, kwargs: Any) -> Any:
    """The tool's own input, for the loop watch's signature (a whole tool call's id left out)."""
    given = args[0] if args else kwargs.get("tool_input")
    if isinstance(given, dict) and given.get("type") == "tool_call":
        return given.get("args")
    return given


def _progress(result: Any) -> Any:
    """What of a tool's answer the loop watch compares: a ``ToolMessage``'s content and status,
    not its call id (new each round)."""
    content = getattr(result, "content", None)
    return result if content is None else [content, getattr(result, "status", None)]


def _tool_wrapper(asynchronous: bool) -> Callable[..., Any]:
    traced = atraced_tool if asynchronous else traced_tool

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if _budgeted_already(instance):
            return wrapped(*args, **kwargs)
        target = handoff_destination(instance)
        if target is not None:  # control flow between agents, not work: an event, not a tool call
            note_handoff(target)
            return wrapped(*args, **kwargs)
        return traced(
            wrapped,
            args,
            kwargs,
            name=_tool_name(instance),
            system=SYSTEM,
            call_id=kwargs.get("tool_call_id"),
            read_only=_read_only(instance),
            is_error=_is_error_message,
            arguments=((_tool_input(args, kwargs),), {}),
            progress=_progress,
        )

    return wrapper


_invoke = retrieval_wrapper(_retriever_name, SYSTEM, _count, False)
_ainvoke = retrieval_wrapper(_retriever_name, SYSTEM, _count, True)
_run = _tool_wrapper(False)
_arun = _tool_wrapper(True)


class LangChainInstrumentor(PatchInstrumentor):
    """Retrievers and tools of ``langchain-core``; chat models are left to the SDK instrumentations."""

    DEPENDENCIES = ("langchain-core >= 0.3",)
    PATCHES = (
        ("langchain_core.retrievers", "BaseRetriever.invoke", _invoke),
        ("langchain_core.retrievers", "BaseRetriever.ainvoke", _ainvoke),
        ("langchain_core.tools.base", "BaseTool.run", _run),
        ("langchain_core.tools.base", "BaseTool.arun", _arun),
    )
