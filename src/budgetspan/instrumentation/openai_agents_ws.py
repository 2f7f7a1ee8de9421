"""The OpenAI Agents SDK's WebSocket transport for the Responses API
(``OpenAIProvider(use_responses_websocket=True)``, ``ResponsesWebSocketSession``).

The SDK sends each model request as a ``response.create`` frame on a WebSocket it keeps open, not
through ``client.responses.create``: without this, those calls were counted by no limit and
charged nothing. Each request (``OpenAIResponsesWSModel._iter_websocket_response_events``, which
sends the frame and yields the response's events) is one budgeted model call like an HTTP one:
reserved before the frame is sent (``BudgetExhausted`` sends nothing), read by the Responses
observer (usage from ``response.completed``, a chained call's context), ended exactly once,
bounded by the run's wall clock and cancellable like any async stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from budgetspan.events import internal_error
from budgetspan.instrumentation.openai import responses_call
from budgetspan.instrumentation.patch_table import suppressed
from budgetspan.instrumentation.sdk_call import in_model_call
from budgetspan.instrumentation.streams import AsyncStreamProxy


class _Events:
    """The SDK's event generator as a stream the proxy can close (``close`` is its ``aclose``)."""

    __slots__ = ("events",)

    def __init__(self, events: Any) -> None:
        self.events = events

    def __aiter__(self) -> _Events:
        return self

    def __anext__(self) -> Any:
        return self.events.__anext__()

    def close(self) -> Any:
        return self.events.aclose()


def websocket_request(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``_iter_websocket_response_events(create_kwargs)``: one budgeted model call."""
    create_kwargs = args[0] if args else kwargs.get("create_kwargs")
    if in_model_call() or suppressed() or not isinstance(create_kwargs, dict):
        return wrapped(*args, **kwargs)
    try:
        call, observer = responses_call(instance, (), dict(create_kwargs))  # (its ``_client``: the provider)
    except Exception:
        internal_error("openai-agents websocket call setup")
        return wrapped(*args, **kwargs)
    return _budgeted(call, observer, wrapped, args, kwargs)


async def _budgeted(call: Any, observer: Any, wrapped: Any, args: Any, kwargs: Any) -> AsyncIterator[Any]:
    await call.astart()  # BudgetExhausted here: the frame is never sent
    events = AsyncStreamProxy(_Events(wrapped(*args, **kwargs)), call, observer)
    try:
        async for event in events:
            yield event
    finally:
        await events.close()  # the call ends once: consumed, failed, or closed early


PATCHES = (
    (
        "agents.models.openai_responses",
        "OpenAIResponsesWSModel._iter_websocket_response_events",
        websocket_request,
    ),
)
