"""pydantic-ai (``pydantic-ai-slim``): tools and agent runs.

- A tool call is one ``execute_tool {name}`` call (the tool's name as the model sees it, after any
  prefix or rename of its toolset), counted against the tool budget and refused *before* the
  toolset runs it (``ToolManager._raw_execute``: after argument validation, inside
  pydantic-ai's own ``execute_tool`` span when its instrumentation is on, whose reservation
  budgetspan's call then takes over: counted once). Its result goes into the run's partial
  results; a ``ModelRetry`` from the body is an error, not a finished tool.
- An agent run (``Agent.iter``, under ``run``, ``run_sync`` and ``run_stream``) is an
  ``invoke_agent {name}`` span around the run, parent of its model and tool calls.
- A refusal reaches the caller as ``BudgetExhausted`` (also out of a task group of parallel
  tools); pydantic-ai retries only on ``ModelRetry``, so it is not retried. A tool past its own
  cap (``ToolRefused``) is the exception: it becomes a ``ModelRetry`` with its explanation, a tool
  error the model reads, and the run goes on.
- Model calls are not wrapped here: ``OpenAIChatModel`` / ``OpenAIResponsesModel`` send them with
  the ``openai`` client, where budgetspan's OpenAI instrumentation makes the one ``chat`` span
  (inside pydantic-ai's own ``chat`` span, if on: one call, counted once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from budgetspan import attributes as A
from budgetspan.accounting.budget import ToolRefused
from budgetspan.events import internal_error
from budgetspan.instrumentation.agents import agent_span, raise_refusal
from budgetspan.instrumentation.patch_table import PatchInstrumentor
from budgetspan.instrumentation.retrieval import arg, atraced_tool

FRAMEWORK = SYSTEM = "pydantic_ai"


def _raw_execute(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``ToolManager._raw_execute(validated, *, usage, wrap_validation_errors)``."""
    try:
        call = arg(args, kwargs, 0, "validated").call
        name = str(call.tool_name)
        call_id = getattr(call, "tool_call_id", None)
    except Exception:
        internal_error("pydantic_ai tool")
        return wrapped(*args, **kwargs)
    return _tool_error_for_refusal(
        atraced_tool(
            wrapped, args, kwargs, name=name, system=SYSTEM, call_id=str(call_id) if call_id else None
        )
    )


async def _tool_error_for_refusal(running: Awaitable[Any]) -> Any:
    """A tool past its own cap (``ToolRefused``) is a tool error for the model (``ModelRetry``:
    pydantic-ai tells the model and counts it against the tool's retries); the run goes on."""
    try:
        return await running
    except ToolRefused as refused:
        from pydantic_ai import ModelRetry

        raise ModelRetry(refused.explanation) from refused


@asynccontextmanager
async def _agent_run(runner: Any, agent: Any) -> AsyncIterator[Any]:
    named = getattr(agent, "name", None)
    with agent_span(str(named or "agent"), FRAMEWORK) as span:
        try:
            async with runner as run:
                if named is None:
                    _name_inferred(span, agent)
                yield run
        except Exception as error:
            raise_refusal(error)
            raise


def _name_inferred(span: Any, agent: Any) -> None:
    """``Agent.iter`` infers a nameless agent's name from the caller's variables as it starts."""
    try:
        name = getattr(agent, "name", None)
        if span is not None and name:
            span.update_name(A.SPAN_AGENT.format(agent=name))
            span.set_attribute(A.GEN_AI_AGENT_NAME, name)
    except Exception:
        internal_error("pydantic_ai agent name")


def _iter(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Agent.iter(...)`` returns an async context manager: ours runs it inside the agent span."""
    return _agent_run(wrapped(*args, **kwargs), instance)


class PydanticAIInstrumentor(PatchInstrumentor):
    """Tools and agent runs of pydantic-ai; its model calls are the OpenAI SDK's."""

    DEPENDENCIES = ("pydantic-ai-slim >= 2.78",)
    PATCHES = (
        ("pydantic_ai.tool_manager", "ToolManager._raw_execute", _raw_execute),
        ("pydantic_ai.agent", "Agent.iter", _iter),
    )
