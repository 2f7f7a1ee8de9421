"""LlamaIndex agents (``llama-index-core`` agent workflows): tool calls counted and refused before
they run, agent runs as ``invoke_agent`` spans, handoffs, and refusals kept out of the agent's
``except Exception``.

- Tool calls: ``BaseWorkflowAgent._call_tool`` and ``AgentWorkflow._call_tool`` (FunctionAgent,
  ReActAgent, CodeActAgent, AgentWorkflow; every tool class) are one ``execute_tool {name}`` call
  each, counted against the tool budget *before* the tool runs. ``_call_tool`` turns every
  exception of the tool into a ``ToolOutput(is_error=True)`` for the model; the refusal is raised
  before that ``try``, and a ``BudgetExhausted`` raised inside the tool (by a model call the tool
  makes, say) is taken back out of the ``ToolOutput`` and raised. ``FunctionTool.call`` /
  ``acall`` called directly (outside an agent) are counted too; inside ``_call_tool`` they are the
  same call and are not counted again.
- Agent runs: ``BaseWorkflowAgent.run`` is an ``invoke_agent {agent name}`` span and
  ``AgentWorkflow.run`` an ``invoke_agent AgentWorkflow`` span (``run`` returns a handler at once:
  the span is current for the workflow's tasks, which copy the context when ``run`` starts them,
  and ends when the handler's result is ready: ``WorkflowHandler.stop_event_result``, which
  awaiting the handler goes through, ends it before the caller resumes). Inside an ``AgentWorkflow`` each agent's turn
  (``take_step``) is an ``invoke_agent {agent}`` span around that agent's model call.
- Handoffs: ``AgentWorkflow``'s ``handoff`` tool is an event on the workflow's span (from the
  current agent to ``to_agent``), not a tool call: it moves control and does no work (as in
  ``langgraph.py``).
- Model calls are counted where the provider SDK sends the request (an LLM over the ``openai``
  SDK is counted by ``openai.py``).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from budgetspan.events import internal_error
from budgetspan.instrumentation import agents
from budgetspan.instrumentation.patch_table import PatchInstrumentor, suppressed
from budgetspan.instrumentation.retrieval import ToolHow, arg, atraced_tool, traced_tool

FRAMEWORK = "llamaindex"
SYSTEM = "llamaindex"
HANDOFF_TOOL = "handoff"

# The agent (or agent workflow) whose run this context belongs to.
_current: ContextVar[str | None] = ContextVar("budgetspan_llamaindex_agent", default=None)
# Inside AgentWorkflow's handoff tool: its FunctionTool call is not a tool call either.
_handing_off: ContextVar[bool] = ContextVar("budgetspan_llamaindex_handoff", default=False)
# Keeps the tasks that end agent spans alive until they have.
_enders: set[asyncio.Task[None]] = set()


def _tool_name(tool: Any) -> str:
    try:
        return str(tool.metadata.get_name())
    except Exception:
        return str(getattr(getattr(tool, "metadata", None), "name", None) or type(tool).__name__)


def _is_error(output: Any) -> bool:
    return bool(getattr(output, "is_error", False))


def _read_only(tool: Any) -> bool:
    metadata = getattr(tool, "metadata", None)
    return bool(getattr(metadata, "read_only", False)) if metadata is not None else False


# --- tool calls ---------------------------------------------------------------------------------------


async def _note_handoff(instance: Any, ctx: Any, tool_input: Any) -> None:
    try:
        target = tool_input.get("to_agent") if isinstance(tool_input, dict) else None
        if target not in (getattr(instance, "agents", None) or {}):
            return  # LlamaIndex answers "invalid agent" and nothing is handed off
        source = await ctx.store.get("current_agent_name", default=None)
        agents.record_handoff(source, target)
    except Exception:
        internal_error("llamaindex handoff")


async def _call_tool(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """One budgeted tool call, refused before ``_call_tool``'s ``try``; a refusal inside the tool
    comes back out of the ``ToolOutput`` the agent made of it."""
    if suppressed():
        return await wrapped(*args, **kwargs)
    ctx, tool, tool_input = (
        arg(args, kwargs, 0, "ctx"),
        arg(args, kwargs, 1, "tool"),
        arg(args, kwargs, 2, "tool_input"),
    )
    name = _tool_name(tool)
    if name == HANDOFF_TOOL and hasattr(instance, "agents"):
        await _note_handoff(instance, ctx, tool_input)
        token = _handing_off.set(True)
        try:  # control flow between agents: not a tool call
            return await wrapped(*args, **kwargs)
        finally:
            _handing_off.reset(token)
    output = await atraced_tool(
        wrapped, args, kwargs, name=name, system=SYSTEM, read_only=_read_only(tool), is_error=_is_error
    )
    refusal = agents.budget_error(getattr(output, "exception", None))
    if refusal is not None:
        raise refusal
    return output


def _function_tool(asynchronous: bool) -> Callable[..., Any]:
    traced = atraced_tool if asynchronous else traced_tool

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if _handing_off.get():
            return wrapped(*args, **kwargs)
        how = ToolHow(read_only=_read_only(instance), is_error=_is_error)
        return traced(wrapped, args, kwargs, name=_tool_name(instance), system=SYSTEM, **how)

    return wrapper


# --- agent runs --------------------------------------------------------------------------------------


_SPAN_ATTR = "_budgetspan_agent_span"


def _end_once(handler: Any, error: BaseException | None) -> None:
    try:
        span = handler.__dict__.pop(_SPAN_ATTR, None)
    except Exception:
        return
    if span is not None:
        agents._end_span(span, None if isinstance(error, asyncio.CancelledError) else error)


async def _stop_event_result(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """The handler's result: the agent's span ends before whoever awaits the handler resumes."""
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as e:
        _end_once(instance, e)
        raise
    _end_once(instance, None)
    return result


async def _end_when_done(handler: Any) -> None:
    """For a handler nobody awaits (events streamed, then dropped): end its span all the same."""
    try:
        await handler.stop_event_result()
    except BaseException:
        pass


def _end_later(handler: Any, span: Span | None) -> None:
    if span is None:
        return
    try:
        handler.__dict__[_SPAN_ATTR] = span
        task = asyncio.ensure_future(_end_when_done(handler))
        _enders.add(task)
        task.add_done_callback(_enders.discard)
    except Exception:
        internal_error("llamaindex agent span")
        agents._end_span(span, None)


def _run_wrapper(name_of: Callable[[Any], str]) -> Callable[..., Any]:
    """``run`` starts the workflow's tasks and returns its handler: the span is current while
    ``run`` starts them (they copy the context) and ends with the handler's result."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if suppressed():
            return wrapped(*args, **kwargs)
        name = name_of(instance)
        span = agents._start_span(name, FRAMEWORK)
        token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
        mine = _current.set(name)
        try:
            handler = wrapped(*args, **kwargs)
        except BaseException as e:
            agents._end_span(span, e)
            raise
        finally:
            _current.reset(mine)
            if token is not None:
                otel_context.detach(token)
        _end_later(handler, span)
        return handler

    return wrapper


def _agent_name(instance: Any) -> str:
    return str(getattr(instance, "name", None) or type(instance).__name__)


def _workflow_name(instance: Any) -> str:
    return type(instance).__name__


async def _take_step(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """One agent's turn inside an AgentWorkflow (inside the agent's own run: no second span)."""
    name = _agent_name(instance)
    if suppressed() or _current.get() == name:
        return await wrapped(*args, **kwargs)
    with agents.agent_span(name, FRAMEWORK):
        mine = _current.set(name)
        try:
            return await wrapped(*args, **kwargs)
        finally:
            _current.reset(mine)


_BASE = "llama_index.core.agent.workflow.base_agent"
_MULTI = "llama_index.core.agent.workflow.multi_agent_workflow"


class LlamaIndexAgentsInstrumentor(PatchInstrumentor):
    """Agent workflows and function tools of ``llama-index-core``."""

    DEPENDENCIES = ("llama-index-core >= 0.12",)
    PATCHES = (
        (_BASE, "BaseWorkflowAgent._call_tool", _call_tool),
        (_MULTI, "AgentWorkflow._call_tool", _call_tool),
        (_BASE, "BaseWorkflowAgent.run", _run_wrapper(_agent_name)),
        (_MULTI, "AgentWorkflow.run", _run_wrapper(_workflow_name)),
        ("llama_index.core.agent.workflow.function_agent", "FunctionAgent.take_step", _take_step),
        ("llama_index.core.agent.workflow.react_agent", "ReActAgent.take_step", _take_step),
        ("llama_index.core.agent.workflow.codeact_agent", "CodeActAgent.take_step", _take_step),
        ("workflows.handler", "WorkflowHandler.stop_event_result", _stop_event_result),
        ("llama_index.core.tools.function_tool", "FunctionTool.call", _function_tool(False)),
        ("llama_index.core.tools.function_tool", "FunctionTool.acall", _function_tool(True)),
    )

    def _instrument(self, **kwargs: Any) -> None:
        try:  # the handler patch belongs to llama-index-workflows: only with the agents present
            importlib.import_module("llama_index.core.agent.workflow")
        except ImportError:
            self._patched = []
            return
        super()._instrument(**kwargs)
