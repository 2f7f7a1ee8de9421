"""``budgetspan.step(name)`` and ``budgetspan.fallback(...)``: which step a model or tool call
serves, and which call replaced another model's answer.

A phase says what kind of work a call is (model decision, verification...); a step says which
part of *this* workflow it serves ("classify", "draft_reply"), so the report and the metrics can
say which model is cheaper per successful run for that step. Calls outside any step are
recorded under their phase. Like the phase scopes, a scope object keeps no per-entry state: what
an exit undoes lives in a context variable, so one object entered from two tasks is two entries.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, ParamSpec, TypeVar, cast

from budgetspan.runs import context

P = ParamSpec("P")
R = TypeVar("R")
MAX_NAME = 64  # a step or reason is a name in code, not text: it becomes a metric label

#: (scope, token) for every step or fallback scope entered in this context, innermost last.
_entered: ContextVar[tuple[tuple[object, Token[Any]], ...]] = ContextVar("budgetspan_step_scopes", default=())


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise ValueError(f"{what}: a non-empty name of at most {MAX_NAME} characters, got {value!r}")
    return value.strip()


def _pop(scope: object) -> Token[Any]:
    return context.pop_entered(_entered, scope, "step scope")


class _Scope:
    """Sync and async context manager and decorator around one context variable's value."""

    def _enter(self) -> Token[Any]:
        raise NotImplementedError

    def _exit(self, token: Token[Any]) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Scope:
        _entered.set((*_entered.get(), (self, self._enter())))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._exit(_pop(self))

    async def __aenter__(self) -> _Scope:
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.__exit__(*exc)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await fn(*args, **kwargs)

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return fn(*args, **kwargs)

        return wrapper


class StepScope(_Scope):
    """``budgetspan.step("classify")``: model and tool calls inside serve this step (recorded as
    ``budgetspan.step`` on their spans and as the ``step`` label of the cost-per-success series)."""

    def __init__(self, name: str) -> None:
        self.name = _name(name, "step")

    def _enter(self) -> Token[Any]:
        return context.enter_step(self.name)

    def _exit(self, token: Token[Any]) -> None:
        context.exit_step(token)


class FallbackScope(_Scope):
    """``budgetspan.fallback(from_model="gpt-4o-mini", reason="rejected")``: the calls inside
    replace an answer of ``from_model`` (a cheap-then-strong chain); their spans say so."""

    def __init__(self, from_model: str, reason: str = "error") -> None:
        self.from_model = _name(from_model, "from_model")
        self.reason = _name(reason, "reason")

    def _enter(self) -> Token[Any]:
        return context.enter_fallback((self.from_model, self.reason))

    def _exit(self, token: Token[Any]) -> None:
        context.exit_fallback(token)
