"""A model call's result handed back to the caller; a stream behind a proxy that ends the call once.

A streamed result is returned behind a proxy that ends the call exactly once, whichever way the
stream ends:

- ``consumed``  the SDK iterator finished;
- ``closed``    the stream (or the HTTP response under it) was closed before the end;
- ``abandoned`` the proxy was garbage-collected unfinished (``weakref.finalize``);
- ``error``     the iterator raised (span status ERROR, the exception propagates unchanged);
- ``cancelled`` the awaiting task was cancelled (or a KeyboardInterrupt hit the loop).
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any

import wrapt

from budgetspan.calls.call import Call
from budgetspan.events import internal_error
from budgetspan.instrumentation.observers import Observer


class StreamState:
    """End-once bookkeeping shared by a stream proxy, its response hook and its finalizer."""

    __slots__ = ("__weakref__", "call", "ended", "finalizer", "in_next", "lock", "observer", "watched")

    def __init__(self, call: Call, observer: Observer) -> None:
        self.call = call
        self.observer = observer
        self.ended = False
        self.in_next = False
        self.watched = False  # an async stream's deadline and cancel are armed
        self.lock = threading.Lock()
        self.finalizer: weakref.finalize[Any, Any] | None = None

    def item(self, item: Any) -> None:
        """The iterator gave ``item``."""
        self.in_next = False
        # Time to first token is marked by the observer, on the first item carrying output.
        try:
            self.observer.on_item(item)
        except Exception:
            internal_error("stream item")

    def stopped(self, error: BaseException | None) -> None:
        """The iterator raised: its end (``error`` None) or an error / a cancellation."""
        self.in_next = False
        if error is None:
            self.finish(None, "consumed")
        else:
            self.finish(error, _end_kind(error))

    def finish(self, error: BaseException | None, stream_end: str) -> None:
        with self.lock:  # a GC finalizer may race a close in another thread
            if self.ended:
                return
            self.ended = True
        if self.finalizer is not None:
            self.finalizer.detach()  # nothing left for the collector to end
        try:
            self.observer.finish()
        except Exception:
            internal_error("stream finish")
        self.call.end(error, stream_end=stream_end)

    def response_closed(self) -> None:
        """The HTTP response was closed: outside our own iteration that is an early close."""
        if not self.in_next:
            self.finish(None, "closed")


def _end_kind(error: BaseException) -> str:
    import asyncio

    if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt, GeneratorExit)):
        return "cancelled"
    return "error"


def finalize(state: StreamState) -> None:
    try:
        state.finish(None, "abandoned")
    except Exception:  # at interpreter exit anything may be half torn down
        pass


def bound_method(obj: Any, name: str) -> Callable[[], Any] | None:
    """``obj.name`` as a callable that holds ``obj`` only weakly.

    Hooks are stored on the object itself; a closure over a bound method would make a reference
    cycle (object -> hook -> bound method -> object), leaving every response to the cyclic GC.
    """
    if name in getattr(obj, "__dict__", {}):
        return getattr(obj, name)  # type: ignore[no-any-return]  # already an instance hook
    function = getattr(type(obj), name, None)
    if function is None:
        return None
    ref = weakref.ref(obj)

    def call() -> Any:
        target = ref()
        return None if target is None else function(target)

    return call


def _hook_close(state: StreamState, response: Any, asynchronous: bool) -> None:
    """Let a close of the HTTP response (by a stream helper, a context manager) end the call."""
    if response is None:
        return
    ref = weakref.ref(state)
    try:
        original_aclose = bound_method(response, "aclose") if asynchronous else None
        if original_aclose is not None:

            async def aclose() -> None:
                try:
                    await original_aclose()
                finally:
                    st = ref()
                    if st is not None:
                        st.response_closed()

            response.aclose = aclose
        original_close = bound_method(response, "close")
        if original_close is not None:

            def close() -> None:
                try:
                    original_close()
                finally:
                    st = ref()
                    if st is not None:
                        st.response_closed()

            response.close = close
    except Exception:
        internal_error("stream close hook")


def _proxy_state(proxy: Any, call: Call, observer: Observer, asynchronous: bool) -> StreamState:
    """A stream proxy's state, ended by a close of the HTTP response or the proxy's collection."""
    state = StreamState(call, observer)
    # The state is kept alive by the finalizer until the proxy goes away (or the call ends).
    state.finalizer = weakref.finalize(proxy, finalize, state)
    _hook_close(state, getattr(proxy.__wrapped__, "response", None), asynchronous)
    return state


class SyncStreamProxy(wrapt.ObjectProxy[Any]):
    """A synchronous SDK stream that ends its call exactly once."""

    def __init__(self, wrapped: Any, call: Call, observer: Observer) -> None:
        super().__init__(wrapped)
        self._self_state = _proxy_state(self, call, observer, asynchronous=False)

    def __iter__(self) -> SyncStreamProxy:
        return self

    def __next__(self) -> Any:
        state = self._self_state
        state.in_next = True
        while True:
            try:
                item = self.__wrapped__.__next__()
            except StopIteration:
                state.stopped(None)
                raise
            except BaseException as e:
                state.stopped(e)
                raise
            state.item(item)
            late = state.call.past_deadline()
            if late is not None:  # a sync stream cannot be interrupted: it stops at its next chunk
                self._stop_at_deadline(late)
            if not state.observer.hidden(item):
                return item
            state.in_next = True

    def _stop_at_deadline(self, exhausted: BaseException) -> None:
        state = self._self_state
        try:
            self.__wrapped__.close()
        except Exception:
            internal_error("stream close at deadline")
        state.finish(exhausted, "error")
        raise exhausted

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_state.finish(None, "closed")

    def __enter__(self) -> SyncStreamProxy:
        enter = getattr(self.__wrapped__, "__enter__", None)
        if enter is not None:
            enter()
        return self

    def __exit__(self, et: Any, exc: Any, tb: Any) -> Any:
        try:
            exit_ = getattr(self.__wrapped__, "__exit__", None)
            return exit_(et, exc, tb) if exit_ is not None else None
        finally:
            self._self_state.finish(None, "closed")


class AsyncStreamProxy(wrapt.ObjectProxy[Any]):
    """An asynchronous SDK stream that ends its call exactly once, bounded by the run's remaining
    wall-clock time and cancellable by ``budgetspan.cancel``: both armed once, at the first chunk
    (``Call.watch_stream``), not around every chunk."""

    def __init__(self, wrapped: Any, call: Call, observer: Observer) -> None:
        super().__init__(wrapped)
        self._self_state = _proxy_state(self, call, observer, asynchronous=True)

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        state = self._self_state
        state.in_next = True
        if not state.watched:
            state.watched = True
            state.call.watch_stream()
        while True:
            try:
                item = await self.__wrapped__.__anext__()
            except StopAsyncIteration:
                state.stopped(None)
                raise
            except BaseException as e:
                stop = state.call.stream_stop(e)  # the run's deadline or cancel, as BudgetExhausted
                state.stopped(stop or e)
                if stop is not None:
                    raise stop from None
                raise
            state.item(item)
            if not state.observer.hidden(item):
                return item
            state.in_next = True

    async def close(self) -> None:
        try:
            result = self.__wrapped__.close()
            if inspect.isawaitable(result):
                await result
        finally:
            self._self_state.finish(None, "closed")

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> AsyncStreamProxy:
        enter = getattr(self.__wrapped__, "__aenter__", None)
        if enter is not None:
            await enter()
        return self

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> Any:
        try:
            exit_ = getattr(self.__wrapped__, "__aexit__", None)
            return (await exit_(et, exc, tb)) if exit_ is not None else None
        finally:
            self._self_state.finish(None, "closed")


# --- results ----------------------------------------------------------------------------------


def is_stream(result: Any) -> bool:
    return _class_shape(type(result))[0]


def is_raw(result: Any) -> bool:
    """``with_raw_response`` / ``with_streaming_response`` objects (LegacyAPIResponse, APIResponse)."""
    return _class_shape(type(result))[1] and "http_response" in getattr(result, "__dict__", ())


_shapes: dict[type, tuple[bool, bool]] = {}


def _class_shape(cls: type) -> tuple[bool, bool]:
    """(a stream class, a class with ``parse``), looked up once per result class.

    Why: on an SDK's pydantic model class each absent name goes through pydantic's metaclass
    ``__getattr__``, which raises AttributeError: three exceptions per whole response, about 22k
    CPU instructions per model call (``bench/README.md``, the per-call pass).
    """
    shape = _shapes.get(cls)
    if shape is None:
        shape = (hasattr(cls, "__next__") or hasattr(cls, "__anext__"), hasattr(cls, "parse"))
        if len(_shapes) > 256:  # classes made on the fly must not grow memory forever
            _shapes.clear()
        _shapes[cls] = shape
    return shape


def finish_now(call: Call, observer: Observer) -> None:
    try:
        observer.finish()
    except Exception:
        internal_error("response finish")
    call.end()
