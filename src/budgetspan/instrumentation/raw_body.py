"""A raw body the caller reads itself (``with_streaming_response`` + ``iter_lines`` / ``iter_bytes``
/ ``iter_text``, sync or async), read on its way to the caller.

Proxies and SSE relays forward a model's stream this way; nothing budgetspan parses sees it. The
HTTP response's ``iter_bytes`` / ``aiter_bytes`` (which ``iter_text``, ``iter_lines`` and
``read`` go through) are tapped: server-sent events go to the observer as they pass (their
usage when the server sends it, else the text for the estimate); a JSON body is kept, bounded, for
the close. The caller's bytes are passed on untouched. Once the SDK parses the body itself (a
``parse()``), the tap stands by: the stream proxy reads it.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from budgetspan.events import internal_error
from budgetspan.instrumentation.streams import StreamState

_MAX_JSON_BYTES = 32 << 20  # a JSON body larger than this is not kept (nor parsed) for the close
_SSE_STARTS = (b"data:", b"event:", b"id:", b":")


class BodyTap:
    """What passed through one raw response's body."""

    def __init__(self, state: StreamState, sse: bool) -> None:
        self.state, self.observer, self.sse = state, state.observer, sse
        self.buffer = bytearray()
        self.broken = False  # a parse failed once: stop reading (never break the caller's body)
        self.reading = False  # the caller reads through the tap: the response's close (made by
        # the HTTP library inside the read, also on a cancellation) leaves the ending to the tap

    def begin(self) -> bool:
        """The caller starts reading; whether the tap owns this read (else the SDK does)."""
        owner = not self.standby()
        self.reading = owner
        return owner

    def end(self, error: BaseException | None) -> None:
        """The read ended: consumed (``error`` None), closed by the caller, or an error."""
        owner, self.reading = self.reading, False
        if not owner:
            return
        body = self.json_body()
        if isinstance(body, dict):
            try:
                self.observer.on_response(body)
            except Exception:
                internal_error("raw body")
        if error is None or isinstance(error, GeneratorExit):
            self.state.finish(None, "consumed" if error is None else "closed")
        else:
            self.state.stopped(error)

    def standby(self) -> bool:
        """Another reader owns the body (the call ended, the SDK's ``parse()`` reads it)."""
        return self.state.ended or self.state.in_next

    def feed(self, data: bytes) -> None:
        if self.broken or self.standby() or not data:
            return
        try:
            if not self.sse and not self.buffer and data.lstrip().startswith(_SSE_STARTS):
                self.sse = True  # server-sent events under another content type
            if self.sse:
                self._events(data)
            elif len(self.buffer) + len(data) <= _MAX_JSON_BYTES:
                self.buffer += data
            else:
                self.broken = True
                self.buffer.clear()
        except Exception:
            self.broken = True
            internal_error("raw body tap")

    def _events(self, data: bytes) -> None:
        self.buffer += data.replace(b"\r\n", b"\n")
        while True:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                return
            event = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
            payload = b"\n".join(lines).strip()
            if payload and payload != b"[DONE]":
                try:
                    item = json.loads(payload)
                except ValueError:
                    continue  # not JSON (a comment, a keep-alive): nothing to read
                if isinstance(item, dict):
                    self.observer.on_item(item)

    def json_body(self) -> Any:
        """The JSON body that passed, when it was one (else None)."""
        if self.sse or self.broken or not self.buffer:
            return None
        try:
            return json.loads(bytes(self.buffer))
        except ValueError:
            return None


def tap_body(http: Any, state: StreamState) -> BodyTap | None:
    """Tap ``http``'s ``iter_bytes`` / ``aiter_bytes`` (instance hooks, holding ``http`` weakly),
    bounded by the run's wall clock as a parsed stream is (a sync read stops at its next piece
    after the deadline, an async one is cancelled at it); None when it has neither."""
    content_type = str(getattr(http, "headers", {}).get("content-type", ""))
    tap = BodyTap(state, "event-stream" in content_type)
    cls = type(http)
    ref = weakref.ref(http)
    iter_bytes, aiter_bytes = getattr(cls, "iter_bytes", None), getattr(cls, "aiter_bytes", None)
    if iter_bytes is None and aiter_bytes is None:
        return None

    if iter_bytes is not None:

        def tapped(*args: Any, **kwargs: Any) -> Iterator[bytes]:
            target = ref()
            if target is None:
                return
            owner = tap.begin()
            try:
                for data in iter_bytes(target, *args, **kwargs):
                    tap.feed(data)
                    late = state.call.past_deadline() if owner else None
                    if late is not None:
                        _stop(state, target, late)
                    yield data
            except BaseException as e:
                tap.end(e if owner else None)
                raise
            tap.end(None)

        http.iter_bytes = tapped
    if aiter_bytes is not None:

        async def atapped(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
            target = ref()
            if target is None:
                return
            owner = tap.begin()
            if owner and not state.watched:
                state.watched = True
                state.call.watch_stream()
            try:
                async for data in aiter_bytes(target, *args, **kwargs):
                    tap.feed(data)
                    yield data
            except BaseException as e:
                stop = state.call.stream_stop(e) if owner and not state.ended else None
                tap.end(stop or (e if owner else None))
                if stop is not None:
                    raise stop from None
                raise
            tap.end(None)

        http.aiter_bytes = atapped
    return tap


def _stop(state: StreamState, http: Any, exhausted: BaseException) -> None:
    """A sync raw read past the run's deadline: the call ends there, the response is closed."""
    state.finish(exhausted, "error")
    try:
        http.close()
    except Exception:
        internal_error("raw body close at deadline")
    raise exhausted
