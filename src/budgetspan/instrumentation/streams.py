"""Shared wrapper machinery for model SDKs: one call, its stream, its raw response, its retries.

``invoke`` / ``ainvoke`` run one SDK method as a budgeted ``Call``: the ledger reservation and the
span open *before* the request (a refused call sends nothing), the SDK's own retries are counted
through ``CURRENT_CALL``, and the result is handed to an ``Observer`` that knows the provider's
shapes. A streamed result is returned behind a proxy that ends the call exactly once, whichever
way the stream ends:

- ``consumed``  the SDK iterator finished;
- ``closed``    the stream (or the HTTP response under it) was closed before the end;
- ``abandoned`` the proxy was garbage-collected unfinished (``weakref.finalize``);
- ``error``     the iterator raised (span status ERROR, the exception propagates unchanged);
- ``cancelled`` the awaiting task was cancelled (or a KeyboardInterrupt hit the loop).
"""

from __future__ import annotations

import inspect
import json
import threading
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import wrapt

from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.calls.call import Call
from budgetspan.events import internal_error

#: The model call whose SDK request is running in this context (for the retry hook).
CURRENT_CALL: ContextVar[Call | None] = ContextVar("budgetspan_current_model_call", default=None)


class Observer:
    """Reads one provider's results; subclasses override what they understand.

    ``finish`` runs once, just before the call ends, and writes what was seen onto the call
    (response model, usage, response attributes, the answer text for ``BudgetExhausted.partial``).
    """

    def __init__(self, call: Call) -> None:
        self.call = call

    def on_item(self, item: Any) -> None:
        """One stream item (chunk / event)."""

    def on_response(self, response: Any) -> None:
        """A whole response: an SDK object, or a dict parsed from a raw body."""

    def finish(self) -> None:
        """Write the observed results onto the call (before it ends)."""

    def set_usage(self, spend: Spend | None) -> None:
        if spend is not None:
            self.call.set_usage(spend)

    def hidden(self, item: Any) -> bool:
        """Whether the caller must not see ``item`` (a chunk only budgetspan asked for)."""
        return False


class _State:
    """End-once bookkeeping shared by a stream proxy, its response hook and its finalizer."""

    __slots__ = ("__weakref__", "call", "ended", "finalizer", "in_next", "lock", "observer")

    def __init__(self, call: Call, observer: Observer) -> None:
        self.call = call
        self.observer = observer
        self.ended = False
        self.in_next = False
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


def _finalize(state: _State) -> None:
    try:
        state.finish(None, "abandoned")
    except Exception:  # at interpreter exit anything may be half torn down
        pass


def _method(obj: Any, name: str) -> Callable[[], Any] | None:
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


def _hook_close(state: _State, response: Any, asynchronous: bool) -> None:
    """Let a close of the HTTP response (by a stream helper, a context manager) end the call."""
    if response is None:
        return
    ref = weakref.ref(state)
    try:
        original_aclose = _method(response, "aclose") if asynchronous else None
        if original_aclose is not None:

            async def aclose() -> None:
                try:
                    await original_aclose()
                finally:
                    st = ref()
                    if st is not None:
                        st.response_closed()

            response.aclose = aclose
        original_close = _method(response, "close")
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


def _proxy_state(proxy: Any, call: Call, observer: Observer, asynchronous: bool) -> _State:
    """A stream proxy's state, ended by a close of the HTTP response or the proxy's collection."""
    state = _State(call, observer)
    # The state is kept alive by the finalizer until the proxy goes away (or the call ends).
    state.finalizer = weakref.finalize(proxy, _finalize, state)
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
            if not state.observer.hidden(item):
                return item
            state.in_next = True

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
    """An asynchronous SDK stream that ends its call exactly once; each chunk is bounded by the
    run's remaining wall-clock time."""

    def __init__(self, wrapped: Any, call: Call, observer: Observer) -> None:
        super().__init__(wrapped)
        self._self_state = _proxy_state(self, call, observer, asynchronous=True)

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        state = self._self_state
        state.in_next = True
        while True:
            try:
                async with state.call.deadline():
                    item = await self.__wrapped__.__anext__()
            except StopAsyncIteration:
                state.stopped(None)
                raise
            except BaseException as e:
                state.stopped(e)
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


def _is_stream(result: Any) -> bool:
    # class-level checks: instance lookups on pydantic models go through a slow __getattr__
    cls = type(result)
    return hasattr(cls, "__next__") or hasattr(cls, "__anext__")


def _is_raw(result: Any) -> bool:
    """``with_raw_response`` / ``with_streaming_response`` objects (LegacyAPIResponse, APIResponse)."""
    return hasattr(type(result), "parse") and "http_response" in getattr(result, "__dict__", ())


def _finish_now(call: Call, observer: Observer) -> None:
    try:
        observer.finish()
    except Exception:
        internal_error("response finish")
    call.end()


def take_result(call: Call, observer: Observer, result: Any, asynchronous: bool) -> Any:
    """Hand the SDK's result back, wrapped where the call is not over yet."""
    try:
        if _is_stream(result):
            proxy = AsyncStreamProxy if asynchronous else SyncStreamProxy
            return proxy(result, call, observer)
        if _is_raw(result):
            _watch_raw(call, observer, result, asynchronous)
            return result
        call.defer_commit = True  # the call ends right below: one ledger commit for all of it
        observer.on_response(result)
    except Exception:
        internal_error("take_result")
    _finish_now(call, observer)
    return result


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


def _watch_raw(call: Call, observer: Observer, raw: Any, asynchronous: bool) -> None:
    """``with_raw_response`` / ``with_streaming_response``: count once, read what we can.

    A JSON body already read is parsed now. Otherwise ``parse()`` is watched (a parsed stream
    comes back behind our proxy, once; a parsed response gives its usage), and the HTTP
    response's close (or the object's collection) ends the call, as unreported if nothing was seen.
    """
    http = raw.http_response
    body = _body_json(http)
    if isinstance(body, dict):
        observer.on_response(body)
        _finish_now(call, observer)
        return
    state = _State(call, observer)
    proxies: dict[int, Any] = {}

    def _adopt(parsed: Any) -> Any:
        if _is_stream(parsed):
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
    _hook_close_raw(state, http, observer)
    state.finalizer = weakref.finalize(raw, _finalize, state)


def _hook_close_raw(state: _State, http: Any, observer: Observer) -> None:
    http_ref = weakref.ref(http)  # the hook lives on ``http``: hold it weakly (no cycle)

    def closed() -> None:
        if state.ended or state.in_next:
            return
        body = _body_json(http_ref())
        if isinstance(body, dict):
            try:
                observer.on_response(body)
            except Exception:
                internal_error("raw close")
        state.finish(None, "closed")

    try:
        original_close = _method(http, "close")
        original_aclose = _method(http, "aclose")

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


# --- one call -----------------------------------------------------------------------------------


def invoke(call: Call, observer: Observer, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run a synchronous SDK method as ``call`` (BudgetExhausted before any request)."""
    call.start()
    token = CURRENT_CALL.set(call)
    try:
        with call.activate():
            result = wrapped(*args, **kwargs)
    except BaseException as e:
        call.end(e)
        raise
    finally:
        CURRENT_CALL.reset(token)
    return take_result(call, observer, result, asynchronous=False)


async def ainvoke(
    call: Call, observer: Observer, wrapped: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
) -> Any:
    """Run an async SDK method as ``call``, bounded by the run's wall clock."""
    call.start()
    token = CURRENT_CALL.set(call)
    try:
        with call.activate():
            async with call.deadline():
                result = await wrapped(*args, **kwargs)
    except BaseException as e:
        call.end(e)
        raise
    finally:
        CURRENT_CALL.reset(token)
    return take_result(call, observer, result, asynchronous=True)


def in_model_call() -> bool:
    """True inside an instrumented SDK request (a nested wrapper must not count it twice)."""
    return CURRENT_CALL.get() is not None


# --- retries ------------------------------------------------------------------------------------


def _count_retry() -> None:
    call = CURRENT_CALL.get()
    if call is not None:
        call.retry()  # BudgetExhausted (max_retries) propagates: the retry is not sent


def retry_hook(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    """Wraps the SDK client's ``_sleep_for_retry``: one call per extra attempt."""
    _count_retry()
    return wrapped(*args, **kwargs)


async def aretry_hook(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    _count_retry()
    return await wrapped(*args, **kwargs)


def content_json(value: Any) -> str | None:
    """Message content as a JSON string for gen_ai.input/output.messages (best effort)."""
    try:
        return json.dumps(value, default=_jsonable, ensure_ascii=False)
    except Exception:
        return None


def _jsonable(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


STREAM_ATTR = A.STREAM


# --- patch tables -------------------------------------------------------------------------------

#: (module, "Class.method", wrapper factory taking ``asynchronous``) — one row per patched method.
Patch = tuple[str, str, Callable[[bool], Callable[..., Any]], bool]


def apply_patches(table: tuple[Patch, ...]) -> list[tuple[str, str]]:
    """Wrap every row whose target exists in this SDK version; return what was wrapped."""
    import importlib

    done: list[tuple[str, str]] = []
    for module, target, factory, asynchronous in table:
        try:
            mod = importlib.import_module(module)
            owner_name, method = target.rsplit(".", 1)
            owner = getattr(mod, owner_name, None)
            if owner is None or not hasattr(owner, method):
                continue  # not in this SDK version
            wrapt.wrap_function_wrapper(mod, target, factory(asynchronous))
            done.append((f"{module}.{owner_name}", method))
        except Exception:
            internal_error(f"patch {module}.{target}")
    return done


def remove_patches(done: list[tuple[str, str]]) -> None:
    from opentelemetry.instrumentation.utils import unwrap

    for owner, method in done:
        try:
            unwrap(owner, method)
        except Exception:
            internal_error(f"unpatch {owner}.{method}")
    done.clear()


def use_provider(provider: Any) -> None:
    """``instrument(tracer_provider=...)``: budgetspan's spans go to that provider."""
    if provider is not None:
        from budgetspan.runs.context import set_tracer_provider

        set_tracer_provider(provider)


def retry_patch(asynchronous: bool) -> Callable[..., Any]:
    return aretry_hook if asynchronous else retry_hook
