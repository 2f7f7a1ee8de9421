"""The ``openai`` SDK's WebSocket mode for the Responses API (``client.responses.connect()``,
also under ``beta``): a ``response.create`` event sent on a connection is a model call.

Each one is reserved when it is sent (``BudgetExhausted`` before it leaves: on the connection,
or queued on the connection manager before it connects) and waits in the connection's order of
requests; the events read back (``recv``, iteration and handlers all parse them with
``parse_event``) go to the oldest one waiting, whose call ends at its ``response.completed``,
``response.incomplete``, ``response.failed`` or ``error``, or when the connection closes first
(then as a stream closed early: else its span was never written and its reservation held for the
rest of the run), when the connection is garbage-collected unclosed (``abandoned``), or when the
SDK reconnects after a drop (``reconnected``: a response sent on the dropped connection is never
answered on the new one; those sent while it reconnects are, and go on waiting). Such calls are
charged their estimate and marked unreported. Usage, a chained call's context and the provider
(from the client the manager was made by) as for ``responses.create``.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from budgetspan.events import internal_error
from budgetspan.instrumentation.patch_table import Patch, suppressed
from budgetspan.instrumentation.sdk_call import in_model_call
from budgetspan.instrumentation.usage import field

_CALLS = "_budgetspan_calls"  # the calls sent and not yet answered, oldest first
_CLIENT = "_budgetspan_client"
#: The events that end a response, and the status they end it with.
_LAST = {
    "response.completed": None,
    "response.incomplete": None,
    "response.failed": "error",
    "error": "error",
}


class _Owner:
    """What ``responses_call`` reads the provider from: the client's ``base_url``."""

    __slots__ = ("_client",)

    def __init__(self, client: Any) -> None:
        self._client = client


def _client_of(obj: Any) -> Any:
    found = vars(obj).get(_CLIENT)
    if found is None:  # a manager keeps its client private (``_ResponsesConnectionManager__client``)
        found = next((v for k, v in vars(obj).items() if k.endswith("__client")), None)
    return found


def _begin(obj: Any, event: Any) -> Any:
    """(call, observer) for a ``response.create`` event; None for any other event."""
    if in_model_call() or suppressed():
        return None
    data = event.to_dict() if callable(getattr(event, "to_dict", None)) else event
    if not isinstance(data, dict) or data.get("type") != "response.create":
        return None
    kwargs = {key: value for key, value in data.items() if key != "type"}
    return _build[0](_Owner(_client_of(obj)), (), {**kwargs, "stream": True})


def _waiting(obj: Any) -> deque[Any]:
    queue: deque[Any] | None = vars(obj).get(_CALLS)
    if queue is None:
        queue = deque()
        setattr(obj, _CALLS, queue)
        # Collected unclosed: its calls end then (the finalizer holds the queue, not ``obj``).
        weakref.finalize(obj, _end_all, queue, "abandoned")
    return queue


def _prepared(instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return _begin(instance, args[0] if args else kwargs.get("event"))
    except Exception:
        internal_error("openai websocket send")
        return None


def _send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    begun = _prepared(instance, args, kwargs)
    if begun is None:
        return wrapped(*args, **kwargs)
    call = begun[0]
    call.start()  # BudgetExhausted here: nothing sent
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as e:
        call.end(e)
        raise
    _waiting(instance).append(begun)
    return result


async def _asend(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    begun = _prepared(instance, args, kwargs)
    if begun is None:
        return await wrapped(*args, **kwargs)
    call = begun[0]
    await call.astart()
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as e:
        call.end(e)
        raise
    _waiting(instance).append(begun)
    return result


def _parse_event(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    event = wrapped(*args, **kwargs)
    queue = vars(instance).get(_CALLS)
    if queue:
        try:
            _observe(queue, event)
        except Exception:
            internal_error("openai websocket event")
    return event


def _observe(queue: deque[Any], event: Any) -> None:
    call, observer = queue[0]
    kind = field(event, "type")
    observer.on_item(event)
    if kind in _LAST:
        queue.popleft()
        _settle(call, observer, _LAST[kind], "consumed")


def _settle(call: Any, observer: Any, status: str | None, stream_end: str) -> None:
    try:
        observer.finish()
    except Exception:
        internal_error("openai websocket finish")
    call.end(status=status, stream_end=stream_end)


def _end_all(queue: deque[Any] | None, stream_end: str) -> None:
    """End the calls still waiting in ``queue`` (their usage estimated: never answered)."""
    try:
        while queue:
            call, observer = queue.popleft()
            _settle(call, observer, None, stream_end)
    except Exception:
        internal_error("openai websocket end")


def _abandon(connection: Any) -> None:
    """The responses still unanswered when their connection closes end there, closed early."""
    _end_all(vars(connection).pop(_CALLS, None), "closed")


def _lost(connection: Any) -> list[Any]:
    """The calls sent on a connection before it dropped (those a reconnect will never answer)."""
    queue = vars(connection).get(_CALLS)
    return list(queue) if queue else []


def _drop(connection: Any, lost: list[Any]) -> None:
    """A reconnect succeeded: the calls sent on the old connection end (``reconnected``); those
    sent while it reconnected (queued by the SDK, sent on the new one) go on waiting."""
    try:
        queue = vars(connection).get(_CALLS)
        gone: deque[Any] = deque()
        for item in lost:
            if queue and item in queue:  # (not answered meanwhile)
                queue.remove(item)
                gone.append(item)
        _end_all(gone, "reconnected")
    except Exception:
        internal_error("openai websocket reconnect")


def _reconnect(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    lost = _lost(instance)
    recovered = wrapped(*args, **kwargs)
    if recovered:
        _drop(instance, lost)
    return recovered


async def _areconnect(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    lost = _lost(instance)
    recovered = await wrapped(*args, **kwargs)
    if recovered:
        _drop(instance, lost)
    return recovered


def _close(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        _abandon(instance)


async def _aclose(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    finally:
        _abandon(instance)


def _adopt(manager: Any, connection: Any) -> None:
    """A manager's connection: its client, and the calls sent (queued) before it connected."""
    try:
        setattr(connection, _CLIENT, _client_of(manager))
        queued = vars(manager).pop(_CALLS, None)
        if queued:
            _waiting(connection).extend(queued)
            queued.clear()  # (the manager's finalizer holds it: now the connection's to end)
    except Exception:
        internal_error("openai websocket connect")


def _enter(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    connection = wrapped(*args, **kwargs)
    _adopt(instance, connection)
    return connection


async def _aenter(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    connection = await wrapped(*args, **kwargs)
    _adopt(instance, connection)
    return connection


def _rows(module: str) -> tuple[Patch, ...]:
    return (
        (module, "ResponsesConnection.send", _send),
        (module, "AsyncResponsesConnection.send", _asend),
        (module, "ResponsesConnection.parse_event", _parse_event),
        (module, "AsyncResponsesConnection.parse_event", _parse_event),
        (module, "ResponsesConnectionManager.send", _send),
        (module, "AsyncResponsesConnectionManager.send", _send),  # (it only queues: sync)
        (module, "ResponsesConnectionManager.__enter__", _enter),
        (module, "ResponsesConnectionManager.enter", _enter),
        (module, "AsyncResponsesConnectionManager.__aenter__", _aenter),
        (module, "AsyncResponsesConnectionManager.enter", _aenter),
    )


#: Makes a Responses call and its observer (``openai.responses_call``, given by ``patches``: the
#: OpenAI instrumentation imports this module, not the other way round).
_build: list[Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]] = []


#: Where the SDK defines the connections' ``close`` (shared with its other WebSocket APIs: a
#: connection without calls waiting is left as it was).
_BASE_CLOSE_ROWS: tuple[Patch, ...] = (
    ("openai._websocket_connection", "WebSocketConnectionBase.close", _close),
    ("openai._websocket_connection", "AsyncWebSocketConnectionBase.close", _aclose),
    ("openai._websocket_connection", "WebSocketConnectionBase._reconnect", _reconnect),
    ("openai._websocket_connection", "AsyncWebSocketConnectionBase._reconnect", _areconnect),
)


def patches(build: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]) -> tuple[Patch, ...]:
    """The rows of the OpenAI instrumentation's patch table, its calls made by ``build``."""
    _build[:] = [build]
    return (
        *_rows("openai.resources.responses.responses"),
        *_rows("openai.resources.beta.responses.responses"),
        *_BASE_CLOSE_ROWS,
    )
