"""``@budgetspan.tool``: budgets, timeouts and retries for plain sync and async functions.

Each call is an ``execute_tool {name}`` span counted against the run's tool budget *before* the
function runs. Per-tool limits come from the decorator and are overridden by the configuration
(``[tools.NAME]`` in ``BUDGETSPAN_CONFIG``), so operations can tighten them without a code change.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from opentelemetry.trace import SpanKind

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import BudgetExhausted, ToolLimits
from budgetspan.accounting.rule import tool_limits_for
from budgetspan.cache.core import Cacher, Outcome
from budgetspan.cache.policy import Cache
from budgetspan.calls.call import Call
from budgetspan.calls.tool_cache import note_outcome, serve_hit
from budgetspan.runs import context, loops
from budgetspan.runs.run import Run

P = ParamSpec("P")
R = TypeVar("R")


class ToolTimeout(TimeoutError):
    """A tool ran past its ``timeout_s``; the call was cancelled (async) or abandoned (sync)."""

    def __init__(self, tool: str, timeout_s: float) -> None:
        super().__init__(f"tool {tool!r} ran past its {timeout_s:g} s timeout")
        self.tool = tool
        self.timeout_s = timeout_s


log = logging.getLogger(__name__)
_abandoned: set[threading.Thread] = set()  # timed-out sync tool bodies still running
_abandoned_lock = threading.Lock()


def abandoned_tools() -> int:
    """Sync tool bodies that ran past their timeout and have not returned yet."""
    with _abandoned_lock:
        return len(_abandoned)


def _run_bounded(name: str, timeout_s: float, func: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run ``func`` in a thread of its own and wait at most ``timeout_s``.

    A thread cannot be killed: past the timeout the body is abandoned, counted and logged. One
    thread per call (not a bounded pool), so bodies that never return cannot starve later tools.
    """
    ctx = contextvars.copy_context()
    abandoned: list[Callable[[], BaseException]] = []
    ctx.run(context.enter_abandonable, abandoned)
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["result"] = ctx.run(func, *args, **kwargs)
        except BaseException as e:
            outcome["error"] = e
        finally:
            done.set()
            with _abandoned_lock:
                _abandoned.discard(threading.current_thread())

    thread = threading.Thread(target=body, name=f"budgetspan-tool-{name}", daemon=True)
    thread.start()
    if not done.wait(timeout_s):
        with _abandoned_lock:
            if not done.is_set():
                _abandoned.add(thread)
            stuck = len(_abandoned)
        log.warning(
            "budgetspan: tool %r ran past its %g s timeout and was abandoned (%d abandoned tool "
            "bodies still running)",
            name,
            timeout_s,
            stuck,
        )
        abandoned.append(lambda: ToolTimeout(name, timeout_s))  # its later calls are refused
        raise ToolTimeout(name, timeout_s)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _effective(run: Run | None, name: str, defaults: ToolLimits) -> ToolLimits:
    """The tool's limits in ``run``: the one rule that the ledger applies (``rule.tool_limits_for``)."""
    return tool_limits_for(run.budget, name, defaults) if run is not None else defaults


def tool_call(
    name: str,
    *,
    limits: ToolLimits | None = None,
    label: str | None = None,
    read_only: bool = False,
    call_id: str | None = None,
    server: str | None = None,
    arguments: tuple[Any, Any] | None = None,
) -> Call:
    """A started-later ``Call`` for one tool invocation (used by ``@tool`` and the tool instrumentations)."""
    optional = {A.GEN_AI_TOOL_CALL_ID: call_id, A.READ_ONLY: read_only, A.TOOL_SERVER: server}
    attrs: dict[str, Any] = {A.GEN_AI_TOOL_NAME: name, **{k: v for k, v in optional.items() if v}}
    return Call(
        A.OP_EXECUTE_TOOL,
        A.SPAN_TOOL.format(tool=name),
        attrs,
        tool=name,
        span_kind=SpanKind.INTERNAL,
        label=label,
        tool_limits=limits,
        arguments=arguments,
    )


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Exception) and not isinstance(exc, BudgetExhausted)


@overload
def tool(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def tool(
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    max_retries: int | None = None,
    max_calls: int | None = None,
    read_only: bool = False,
    label: str | None = None,
    cache: Cache | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    max_retries: int | None = None,
    max_calls: int | None = None,
    read_only: bool = False,
    label: str | None = None,
    cache: Cache | None = None,
) -> Any:
    """Make a function a budgeted tool. ``read_only`` marks reads that could run in parallel;
    ``cache`` (``budgetspan.Cache``) lets the cache answer calls (``calls.tool_cache``)."""
    defaults = ToolLimits(timeout_s=timeout_s, max_calls=max_calls, max_retries=max_retries)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        tool_name = name or func.__name__
        cacher = Cacher(cache, tool_name) if cache is not None else None
        make = _async_tool if inspect.iscoroutinefunction(func) else _sync_tool
        wrapper = make(func, tool_name, defaults, label, read_only, cacher)
        if cacher is not None:
            wrapper.cache = cacher  # type: ignore[attr-defined]  # (its ``invalidate``)
        return wrapper

    return decorate(fn) if fn is not None else decorate


def _finished(call: Call, name: str, result: Any) -> None:
    if call.run is not None:
        call.run.record_tool_result(name, result)
        loop_step(call, name, result)


def loop_step(call: Call, name: str, result: Any = None, error: BaseException | None = None) -> None:
    """One step for the run's loop watch (its signature was taken when the call started)."""
    if call.run is None or call.signature is None or isinstance(error, BudgetExhausted):
        return
    try:
        loops.step(call.run, name, call.signature, result, error)
    except Exception:
        events.internal_error("tool loop step")


def _started(call: Call, tool_name: str, defaults: ToolLimits, outcome: Outcome | None) -> float | None:
    """A started tool call (sync or async): the cache outcome noted, and the timeout it runs under."""
    if outcome is not None:
        note_outcome(call, outcome)
    timeout_s = _effective(call.run, tool_name, defaults).timeout_s
    _note_timeout(call, timeout_s)
    return timeout_s


def _succeeded(call: Call, tool_name: str, outcome: Outcome | None, result: Any) -> None:
    """A tool call that returned (sync or async): ended, its result recorded for the run."""
    if outcome is not None:
        note_outcome(call, outcome)  # now with what the computation cost
    call.end()
    _finished(call, tool_name, result)


def _sync_tool(
    func: Callable[..., Any],
    tool_name: str,
    defaults: ToolLimits,
    label: str | None,
    read_only: bool,
    cacher: Cacher | None,
) -> Callable[..., Any]:
    def call_once(args: Any, kwargs: Any, outcome: Outcome | None = None) -> Any:
        call = tool_call(
            tool_name, limits=defaults, label=label, read_only=read_only, arguments=(args, kwargs)
        ).start()
        timeout_s = _started(call, tool_name, defaults, outcome)
        try:
            result = run_tool(call, tool_name, timeout_s, func, args, kwargs)
        except Exception as error:
            loop_step(call, tool_name, error=error)
            raise
        _succeeded(call, tool_name, outcome, result)
        return result

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if cacher is None:
            return call_once(args, kwargs)
        return cacher.call(
            args, kwargs, lambda o: call_once(args, kwargs, o), serve_hit(tool_name, read_only)
        )

    return wrapper


def _async_tool(
    func: Callable[..., Any],
    tool_name: str,
    defaults: ToolLimits,
    label: str | None,
    read_only: bool,
    cacher: Cacher | None,
) -> Callable[..., Any]:
    async def call_once(args: Any, kwargs: Any, outcome: Outcome | None = None) -> Any:
        call = tool_call(
            tool_name, limits=defaults, label=label, read_only=read_only, arguments=(args, kwargs)
        )
        await call.astart()
        timeout_s = _started(call, tool_name, defaults, outcome)
        try:
            result = await arun_tool(call, tool_name, timeout_s, func, args, kwargs)
        except Exception as error:
            loop_step(call, tool_name, error=error)
            raise
        _succeeded(call, tool_name, outcome, result)
        return result

    @functools.wraps(func)
    async def awrapper(*args: Any, **kwargs: Any) -> Any:
        if cacher is None:
            return await call_once(args, kwargs)
        return await cacher.acall(
            args, kwargs, lambda o: call_once(args, kwargs, o), serve_hit(tool_name, read_only)
        )

    return awrapper


def _note_timeout(call: Call, timeout_s: float | None) -> None:
    if timeout_s is not None and call.span is not None:
        call.span.set_attribute(A.TOOL_TIMEOUT_S, timeout_s)


def run_tool(
    call: Call, name: str, timeout_s: float | None, func: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    """Run a sync tool under a started ``call``: timeout and retries.

    A thread cannot be killed, so past ``timeout_s`` the tool is abandoned (not awaited). On
    failure the call is ended and the error raised; on success the result is returned with the
    call still open, so the caller decides what the result means (e.g. an MCP error result).
    """
    while True:
        try:
            with call.activate():
                if timeout_s is None:
                    return func(*args, **kwargs)
                return _run_bounded(name, timeout_s, func, args, kwargs)
        except ToolTimeout as e:
            if _retry(call, e):
                continue
            call.end(e, status="timeout")
            raise
        except BaseException as e:
            if _retryable(e) and _retry(call, e):
                continue
            call.end(e)
            raise


async def arun_tool(
    call: Call,
    name: str,
    timeout_s: float | None,
    func: Callable[..., Awaitable[Any]],
    args: Any,
    kwargs: Any,
) -> Any:
    """Run an async tool under a started ``call``: past ``timeout_s`` it is cancelled (status timeout),
    and the run's wall clock bounds it. Ends the call on failure, like ``run_tool``."""
    while True:
        try:
            with call.activate():
                async with call.deadline(timeout_s):
                    return await func(*args, **kwargs)
        except TimeoutError as e:
            if timeout_s is None:  # the tool's own TimeoutError, not our timeout
                if _retry(call, e):
                    continue
                call.end(e, status="error")
                raise
            err = e if isinstance(e, ToolTimeout) else ToolTimeout(name, timeout_s)
            if _retry(call, err):
                continue
            call.end(err, status="timeout")
            raise err from None
        except BaseException as e:
            if _retryable(e) and _retry(call, e):
                continue
            call.end(e)
            raise


def _retry(call: Call, error: BaseException) -> bool:
    """Whether to try again: the tool's retry limit and the run's retry budget both allow it."""
    lim = _effective(call.run, call.tool or "", call.tool_limits or ToolLimits())
    if not lim.max_retries or call.retries >= lim.max_retries:
        return False
    try:
        call.retry()
    except BudgetExhausted as exhausted:  # the run's retry budget is spent: that is the stop reason
        call.end(error, status="refused")
        raise exhausted from error
    return True


__all__ = ["ToolTimeout", "arun_tool", "loop_step", "run_tool", "tool", "tool_call"]
