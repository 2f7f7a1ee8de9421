"""``with_raw_response`` / ``with_streaming_response``: a raw result counted once, read where we can."""

from __future__ import annotations

import inspect
import json
import weakref
from typing import Any

from budgetspan.calls.call import Call
from budgetspan.events import internal_error
from budgetspan.instrumentation.observers import Observer
from budgetspan.instrumentation.raw_body import BodyTap, tap_body
from budgetspan.instrumentation.streams import (
    AsyncStreamProxy,
    StreamState,
    SyncStreamProxy,
    bound_method,
    finalize,
    finish_now,
    is_stream,
)


def _body_json(http: Any) -> Any:
    if http is None:
        return None
    try:
        content = http.content  # raises when the body has not been read
    except Exception:
        return None
    try:
        return json.loads(content)
    except Exception:
        return None


def watch_raw(call: Call, observer: Observer, raw: Any, asynchronous: bool) -> None:
    """``with_raw_response`` / ``with_streaming_response``: count once, read what we can.

    A JSON body already read is parsed now. Otherwise ``parse()`` is watched (a parsed stream
    comes back behind our proxy, once; a parsed response gives its usage), a body the caller
    reads raw is read as it passes (``raw_body``), and the HTTP response's close (or the object's
    collection) ends the call, as unreported if nothing was seen.
    """
    http = raw.http_response
    body = _body_json(http)
    if isinstance(body, dict):
        observer.on_response(body)
        finish_now(call, observer)
        return
    state = StreamState(call, observer)
    _hook_parse(raw, state, asynchronous)
    tap = None
    if http is not None:  # the body as the caller reads it raw (``iter_lines``...)
        try:
            tap = tap_body(http, state)
        except Exception:
            internal_error("raw body tap")
    _hook_close_raw(state, http, observer, tap)
    state.finalizer = weakref.finalize(raw, finalize, state)


def _hook_parse(raw: Any, state: StreamState, asynchronous: bool) -> None:
    """Watch ``raw.parse()``: a parsed stream comes back behind our proxy (once), a parsed
    response is read and ends the call."""
    call, observer = state.call, state.observer
    proxies: dict[int, Any] = {}

    def _adopt(parsed: Any) -> Any:
        if is_stream(parsed):
            proxy = proxies.get(id(parsed))
            if proxy is None:
                # The stream proxy takes over the ending; our state only stands by.
                state.ended = True
                cls = AsyncStreamProxy if asynchronous else SyncStreamProxy
                proxy = proxies[id(parsed)] = cls(parsed, call, observer)
            return proxy
        if not state.ended:
            try:
                observer.on_response(parsed)
            except Exception:
                internal_error("raw parse")
            state.finish(None, "consumed")
        return parsed

    parse_function = type(raw).parse
    raw_ref = weakref.ref(raw)  # the hook lives on ``raw``: hold it weakly (no cycle)

    def original_parse(*args: Any, **kwargs: Any) -> Any:
        target = raw_ref()
        if target is None:
            raise ReferenceError("the raw response is gone")
        return parse_function(target, *args, **kwargs)

    if inspect.iscoroutinefunction(parse_function):

        async def aparse(*args: Any, **kwargs: Any) -> Any:
            state.in_next = True  # reading the body closes the response: not an early close
            try:
                parsed = await original_parse(*args, **kwargs)
            finally:
                state.in_next = False
            return _adopt(parsed)

        raw.parse = aparse
    else:

        def parse(*args: Any, **kwargs: Any) -> Any:
            state.in_next = True  # reading the body closes the response: not an early close
            try:
                parsed = original_parse(*args, **kwargs)
            finally:
                state.in_next = False
            return _adopt(parsed)

        raw.parse = parse


def _hook_close_raw(state: StreamState, http: Any, observer: Observer, tap: BodyTap | None) -> None:
    http_ref = weakref.ref(http)  # the hook lives on ``http``: hold it weakly (no cycle)

    def closed() -> None:
        if state.ended or state.in_next or (tap is not None and tap.reading):
            return
        body = _body_json(http_ref())
        if body is None and tap is not None:
            body = tap.json_body()  # read in pieces by the caller
        if isinstance(body, dict):
            try:
                observer.on_response(body)
            except Exception:
                internal_error("raw close")
        state.finish(None, "closed")

    try:
        original_close = bound_method(http, "close")
        original_aclose = bound_method(http, "aclose")

        def close() -> None:
            try:
                if original_close is not None:
                    original_close()
            finally:
                closed()

        http.close = close
        if original_aclose is not None:

            async def aclose() -> None:
                try:
                    await original_aclose()
                finally:
                    closed()

            http.aclose = aclose
    except Exception:
        internal_error("raw close hook")
