"""OpenAI Agents SDK (``openai-agents``, module ``agents``): tools, agents, handoffs, refusals.

- A function tool is one ``execute_tool {name}`` call (the tool's name as the model sees it, not
  the Python function's), counted against the tool budget and refused *before* its body runs,
  with the tool's per-tool limits from the configuration; its output goes into the run's partial
  results. A body that failed and was answered for by a ``failure_error_function`` (the SDK's
  default or the tool's own) is an error, not a finished tool.
- Each agent the run passes through is an ``invoke_agent {name}`` span (the SDK's own agent span
  lifecycle: a handoff ends one agent's span and starts the next one's), parent of that agent's
  model and tool calls; a handoff is an event on the span of the agent that hands off.
- A refusal reaches the caller of ``Runner.run`` / ``run_sync`` / ``run_streamed`` as
  ``BudgetExhausted`` with its partial results: the tool's ``failure_error_function`` is not
  asked to turn it into a message for the model (but for ``ToolRefused``, a tool past its own cap:
  that one is worded by it, a tool error for the model, and the run goes on), the SDK's ``UserError`` wrapping is taken off,
  and a model retry policy is not consulted about it (it is never retried).
- Model calls are not wrapped here: the SDK sends them with the ``openai`` client (Responses or
  Chat Completions), where budgetspan's OpenAI instrumentation makes the one ``chat`` span.

Handoffs, hosted tools (web search, file search, code interpreter: run by the provider) and the
computer, shell and apply-patch tools are not tool calls here.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from contextvars import ContextVar
from typing import Any

import wrapt

from budgetspan.accounting.budget import BudgetExhausted, ToolRefused
from budgetspan.events import internal_error
from budgetspan.instrumentation.agents import (
    agent_span,
    budget_error,
    raise_refusal,
    record_handoff,
    stopped_run,
)
from budgetspan.instrumentation.openai_agents_ws import PATCHES as websocket_patches
from budgetspan.instrumentation.patch_table import PatchInstrumentor
from budgetspan.instrumentation.retrieval import atraced_tool

FRAMEWORK = SYSTEM = "openai_agents"

#: Inside an instrumented tool: set to [True] when a failure_error_function answered for its body.
_failed: ContextVar[list[bool] | None] = ContextVar("budgetspan_openai_agents_tool_failed", default=None)


def refusal(error: BaseException) -> BudgetExhausted | None:
    """The ``BudgetExhausted`` the caller should see for ``error``: the one inside it (the SDK
    wraps a tool's exceptions in ``UserError``), else the run's own if it has stopped at a limit."""
    return budget_error(error) or stopped_run()


# --- tools ----------------------------------------------------------------------------------------


def _tool_output(result: Any) -> Any:
    return getattr(result, "output", result)


async def _invoke_tool(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``_invoke_function_tool_with_metadata(function_tool=, context=, arguments=)``."""
    try:
        function_tool = kwargs.get("function_tool")
        name = str(getattr(function_tool, "name", None) or "unknown")
        call_id = getattr(kwargs.get("context"), "tool_call_id", None)
    except Exception:
        internal_error("openai_agents tool")
        return await wrapped(*args, **kwargs)
    failed = [False]

    def is_error(result: Any) -> bool:
        return failed[0] or bool(getattr(result, "is_sdk_generated_error", False))

    token = _failed.set(failed)
    try:
        return await atraced_tool(
            wrapped,
            args,
            kwargs,
            name=name,
            system=SYSTEM,
            call_id=str(call_id) if call_id else None,
            is_error=is_error,
            partial=_tool_output,
        )
    except ToolRefused as refused:
        return await _as_tool_error(kwargs, refused)
    finally:
        _failed.reset(token)


async def _as_tool_error(kwargs: Any, refused: ToolRefused) -> Any:
    """A tool past its own cap: the tool's failure_error_function words the refusal for the model,
    as it would a failed body (the run goes on); without one, the refusal is raised."""
    try:
        from agents.tool import (
            _FunctionToolInvocationResult,
            maybe_invoke_function_tool_failure_error_function,
        )

        output = await maybe_invoke_function_tool_failure_error_function(
            function_tool=kwargs.get("function_tool"), context=kwargs.get("context"), error=refused
        )
    except Exception:
        internal_error("openai_agents tool refusal")
        raise refused from None
    if output is None:
        raise refused
    return _FunctionToolInvocationResult(output, is_sdk_generated_error=True)


async def _failure_error_function(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``maybe_invoke_function_tool_failure_error_function(function_tool=, context=, error=)``:
    None (no formatter: the SDK raises the error) for a refusal or in a run that has stopped."""
    try:
        found = refusal(kwargs.get("error"))
        if found is not None and not isinstance(found, ToolRefused):  # a tool's own cap: a tool error
            return None
    except Exception:
        internal_error("openai_agents failure_error_function")
    result = await wrapped(*args, **kwargs)
    failed = _failed.get()
    if result is not None and failed is not None:
        failed[0] = True
    return result


# --- model retries --------------------------------------------------------------------------------


async def _evaluate_retry(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A refused model call is not retried, whatever the retry policy says."""
    try:
        if refusal(kwargs.get("error")) is not None:
            from agents.retry import RetryDecision

            return RetryDecision(retry=False)
    except Exception:
        internal_error("openai_agents retry")
    return await wrapped(*args, **kwargs)


# --- agents and handoffs ----------------------------------------------------------------------------


class _AgentSpan(wrapt.ObjectProxy[Any]):
    """The SDK's agent span, also budgetspan's ``invoke_agent`` span: started and made current
    where the SDK starts its own (``mark_as_current``), ended where the SDK finishes it."""

    def __init__(self, span: Any, agent: str) -> None:
        super().__init__(span)
        self._self_agent = agent
        self._self_scope: ExitStack | None = None

    def start(self, mark_as_current: bool = False) -> Any:
        result = self.__wrapped__.start(mark_as_current=mark_as_current)
        if self._self_scope is None:
            scope = ExitStack()
            try:
                scope.enter_context(agent_span(self._self_agent, FRAMEWORK))
                self._self_scope = scope
            except Exception:
                internal_error("openai_agents agent span")
        return result

    def finish(self, reset_current: bool = False) -> Any:
        scope, self._self_scope = self._self_scope, None
        if scope is not None:
            try:
                error = sys.exc_info()[1]  # ended in the SDK's finally: the run's error, if any
                error = budget_error(error) or error  # a refusal is no failure of the agent
                scope.__exit__(type(error) if error else None, error, error.__traceback__ if error else None)
            except Exception:
                internal_error("openai_agents agent span end")
        return self.__wrapped__.finish(reset_current=reset_current)

    def __enter__(self) -> _AgentSpan:
        self.start(mark_as_current=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish(reset_current=True)


def _agent_span(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``agents.tracing.agent_span(name=...)`` as the runner calls it."""
    span = wrapped(*args, **kwargs)
    try:
        name = kwargs.get("name", args[0] if args else None)
        return _AgentSpan(span, str(name or "agent"))
    except Exception:
        internal_error("openai_agents agent span")
        return span


async def _execute_handoffs(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        source = getattr(kwargs.get("public_agent"), "name", None)
        handoffs = kwargs.get("run_handoffs") or []
        target = getattr(getattr(handoffs[0], "handoff", None), "agent_name", None) if handoffs else None
        record_handoff(source, target)
    except Exception:
        internal_error("openai_agents handoff")
    return await wrapped(*args, **kwargs)


# --- the runner -------------------------------------------------------------------------------------


async def _surface_refusal(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``AgentRunner.run`` and the streamed run's loop: a refusal leaves as ``BudgetExhausted``."""
    try:
        return await wrapped(*args, **kwargs)
    except Exception as error:
        raise_refusal(error)
        raise


_TOOLS = "agents.run_internal.tool_execution"


class OpenAIAgentsInstrumentor(PatchInstrumentor):
    """Tools, agents and handoffs of the OpenAI Agents SDK; its model calls are the OpenAI SDK's."""

    DEPENDENCIES = ("openai-agents >= 0.24",)
    PATCHES = (
        # the runner's function tools (a name imported into tool_execution) and invoke_function_tool's
        (_TOOLS, "_invoke_function_tool_with_metadata", _invoke_tool),
        ("agents.tool", "_invoke_function_tool_with_metadata", _invoke_tool),
        (_TOOLS, "maybe_invoke_function_tool_failure_error_function", _failure_error_function),
        ("agents.tool", "maybe_invoke_function_tool_failure_error_function", _failure_error_function),
        ("agents.run_internal.model_retry", "_evaluate_retry", _evaluate_retry),
        ("agents.run", "agent_span", _agent_span),  # Runner.run's loop
        ("agents.run_internal.run_loop", "agent_span", _agent_span),  # run_streamed's loop
        ("agents.run_internal.turn_resolution", "execute_handoffs", _execute_handoffs),
        ("agents.run", "AgentRunner.run", _surface_refusal),  # also run_sync
        ("agents.run", "start_streaming", _surface_refusal),  # run_streamed: raised by stream_events
        *websocket_patches,  # the Responses API over a WebSocket: model calls (openai_agents_ws)
    )
