"""LangGraph: named graphs and agents as ``invoke_agent`` spans; refusals LangGraph would swallow.

- ``Pregel.stream`` / ``astream`` of a *named* graph (``create_react_agent(name=...)``,
  ``compile(name=...)``, a supervisor or swarm) is one ``invoke_agent {name}`` span for the whole
  iteration; ``invoke`` / ``ainvoke`` go through them, and a graph run as a node of another graph
  is its child. A graph left with LangGraph's default name makes no span, nor does a graph
  inside a graph of the same name. The span is current
  only while the graph computes a step, never in the caller's loop between two chunks.
- Tools are LangChain tools: ``langchain.py`` counts them (``BaseTool.run`` / ``arun``), once.
  A tool whose metadata names a handoff destination (``langgraph-supervisor`` and
  ``langgraph-swarm``'s ``transfer_to_*`` tools) is a handoff instead: an event on the span of
  the agent that hands off, not a tool call. A handoff moves control between agents and does no
  work, so a tool budget does not depend on how the agents are wired (the model call that chose
  the handoff is counted as any model call).
- Model calls are counted where the provider SDK sends the request (``langchain-openai`` uses the
  ``openai`` SDK, counted by ``openai.py``).
- Refusals: ``ToolNode(handle_tool_errors=...)`` turns a tool's exception into a ``ToolMessage``
  for the model, and a node ``RetryPolicy`` runs a failed node again. Both would carry on past a
  ``BudgetExhausted``. Two private functions are the single points where LangGraph decides this,
  and only a ``BudgetExhausted`` (or an error raised after the run stopped at a limit) is taken
  out of their hands: ``langgraph.prebuilt.tool_node._handle_tool_error`` re-raises it, and
  ``langgraph.pregel._retry._should_retry_on`` answers "do not retry". A LangGraph version
  without them is still instrumented, with a warning that refusals may reach the model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from budgetspan.events import internal_error
from budgetspan.instrumentation import agents
from budgetspan.instrumentation.patch_table import PatchInstrumentor, apply_patches, suppressed

log = logging.getLogger(__name__)

FRAMEWORK = "langgraph"
DEFAULT_GRAPH_NAME = "LangGraph"  # Pregel's default: an unnamed graph
HANDOFF_KEY = "__handoff_destination"  # tool metadata of langgraph-supervisor / langgraph-swarm

# The agent whose graph is computing a step here: (name, span), for handoff events.
_current: ContextVar[tuple[str, Span | None] | None] = ContextVar("budgetspan_langgraph_agent", default=None)


def _graph_name(graph: Any) -> str | None:
    """The agent name to make a span for: None for an unnamed graph, and for a graph running
    inside a graph of the same name (``create_supervisor(...).compile(name="supervisor")`` runs
    its own ``supervisor`` agent: one agent, one span)."""
    if suppressed():
        return None
    name = getattr(graph, "name", None)
    if not isinstance(name, str) or not name or name == DEFAULT_GRAPH_NAME:
        return None
    current = _current.get()
    if current is not None and current[0] == name:
        return None
    return name


@contextlib.contextmanager
def _step(name: str, span: Span | None) -> Iterator[None]:
    """The agent's span and name current for one step of the graph (then the caller's again)."""
    token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
    mine = _current.set((name, span))
    try:
        yield
    finally:
        _current.reset(mine)
        if token is not None:
            otel_context.detach(token)


@contextlib.contextmanager
def _graph_span(name: str) -> Iterator[Span | None]:
    """The graph's agent span around a whole stream, ended with the error that stopped it (the
    caller stopping early is no error)."""
    span = agents._start_span(name, FRAMEWORK)
    error: BaseException | None = None
    try:
        yield span
    except BaseException as e:
        error = None if isinstance(e, GeneratorExit) else e
        raise
    finally:
        agents._end_span(span, error)


def _close(chunks: Any, name: str, span: Span | None) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        with _step(name, span):
            close()


async def _aclose(chunks: Any, name: str, span: Span | None) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with _step(name, span):
            await aclose()


def _traced_stream(wrapped: Any, args: Any, kwargs: Any, name: str) -> Iterator[Any]:
    chunks: Iterator[Any] | None = None
    with _graph_span(name) as span:
        try:
            while True:
                with _step(name, span):
                    if chunks is None:
                        chunks = iter(wrapped(*args, **kwargs))
                    try:
                        item = next(chunks)
                    except StopIteration:
                        return
                yield item
        finally:
            _close(chunks, name, span)


async def _atraced_stream(wrapped: Any, args: Any, kwargs: Any, name: str) -> AsyncIterator[Any]:
    chunks: Any = None
    with _graph_span(name) as span:
        try:
            while True:
                with _step(name, span):
                    if chunks is None:
                        chunks = wrapped(*args, **kwargs).__aiter__()
                    try:
                        item = await chunks.__anext__()
                    except StopAsyncIteration:
                        return
                yield item
        finally:
            await _aclose(chunks, name, span)


def _stream(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    name = _graph_name(instance)
    if name is None:
        return wrapped(*args, **kwargs)
    return _traced_stream(wrapped, args, kwargs, name)


def _astream(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    name = _graph_name(instance)
    if name is None:
        return wrapped(*args, **kwargs)
    return _atraced_stream(wrapped, args, kwargs, name)


# --- handoffs ---------------------------------------------------------------------------------------


def handoff_destination(tool: Any) -> str | None:
    """The agent a ``langgraph-supervisor`` / ``langgraph-swarm`` handoff tool transfers to."""
    metadata = getattr(tool, "metadata", None)
    if isinstance(metadata, dict):
        target = metadata.get(HANDOFF_KEY)
        if isinstance(target, str):
            return target
    return None


def note_handoff(target: str) -> None:
    """A handoff tool is being called: an event on the span of the agent that hands off."""
    if suppressed():
        return
    try:
        current = _current.get()
        source, span = current if current is not None else (None, None)
        if span is None:
            agents.record_handoff(source, target)
            return
        with trace.use_span(span, end_on_exit=False):
            agents.record_handoff(source, target)
    except Exception:
        internal_error("langgraph handoff")


# --- refusals LangGraph would swallow or retry -----------------------------------------------------


def _refusal(error: Any) -> BaseException | None:
    if suppressed() or not isinstance(error, BaseException):
        return None
    return agents.budget_error(error) or agents.stopped_run()


def _handle_tool_error(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A refused tool raises to the graph's caller instead of becoming a ToolMessage."""
    refusal = _refusal(args[0] if args else kwargs.get("e"))
    if refusal is not None:
        raise refusal
    return wrapped(*args, **kwargs)


def _should_retry_on(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A node that failed because the run stopped at a limit is not run again."""
    if _refusal(args[1] if len(args) > 1 else kwargs.get("exc")) is not None:
        return False
    return wrapped(*args, **kwargs)


#: Functions patched to keep a refusal a refusal: (module, function, wrapper, what is lost without it).
_GUARDS: tuple[tuple[str, str, Callable[..., Any], str], ...] = (
    (
        "langgraph.prebuilt.tool_node",
        "_handle_tool_error",
        _handle_tool_error,
        "ToolNode(handle_tool_errors=...) may hand a refused tool call to the model as an error message",
    ),
    (
        "langgraph.pregel._retry",
        "_should_retry_on",
        _should_retry_on,
        "a node RetryPolicy may retry a node refused by the budget",
    ),
)


class LangGraphInstrumentor(PatchInstrumentor):
    """Named LangGraph graphs as agent spans; refusals kept out of ToolNode's and RetryPolicy's hands."""

    DEPENDENCIES = ("langgraph >= 1.0",)
    PATCHES = (
        ("langgraph.pregel", "Pregel.stream", _stream),
        ("langgraph.pregel", "Pregel.astream", _astream),
    )

    _guarding: object = None  # the token of the current instrument(); None once uninstrumented

    def _instrument(self, **kwargs: Any) -> None:
        super()._instrument(**kwargs)
        if not self._patched:
            return  # LangGraph is not installed: nothing to say
        # Each guard is applied once its module is wholly imported: now if it is, else at its
        # import (``prebuilt.tool_node`` comes with ToolNode, often after ``langgraph.graph``, whose
        # import instruments LangGraph; an app of plain StateGraphs never imports it).
        token = self._guarding = object()
        for guard in _GUARDS:
            wrapt.register_post_import_hook(functools.partial(self._guard, token, guard), guard[0])

    def _guard(self, token: object, guard: tuple[str, str, Callable[..., Any], str], _module: Any) -> None:
        if token is not self._guarding:
            return  # uninstrumented (or instrumented again) since this hook was registered
        module, name, wrapper, lost = guard
        done = apply_patches(((module, name, wrapper),))
        if not done:
            log.warning("budgetspan: this LangGraph has no %s.%s: %s", module, name, lost)
        self._patched += done

    def _uninstrument(self, **kwargs: Any) -> None:
        self._guarding = None
        super()._uninstrument(**kwargs)
