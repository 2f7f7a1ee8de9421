"""What the current code runs in: its run, phase and call, and the process-wide ledger and tracer.

The current run, phase and call live in context variables, so they follow asyncio tasks and
``contextvars.copy_context()`` into threads. Other modules read and set them only through the
functions here.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Tracer, TracerProvider

from budgetspan import attributes as A
from budgetspan.accounting.ledger import Ledger
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.config import get_config

if TYPE_CHECKING:
    from budgetspan.runs.run import Run

T = TypeVar("T")

_run: ContextVar[Run | None] = ContextVar("budgetspan_run", default=None)
_phase: ContextVar[str | None] = ContextVar("budgetspan_phase", default=None)
_step: ContextVar[str | None] = ContextVar("budgetspan_step", default=None)
#: Inside ``budgetspan.fallback(...)``: (the model replaced, why); None outside.
_fallback: ContextVar[tuple[str, str] | None] = ContextVar("budgetspan_fallback", default=None)
#: Inside a counted call: the call object (or True, for ``in_call()`` blocks); None outside.
_call: ContextVar[Any] = ContextVar("budgetspan_call", default=None)

#: Inside sync tool bodies run in a thread of their own: a box per body, filled (with the maker of
#: the error its later calls raise) when the body is abandoned at its timeout.
_abandoned: ContextVar[tuple[list[Callable[[], BaseException]], ...]] = ContextVar(
    "budgetspan_abandoned", default=()
)

_ledger: Ledger = InMemoryLedger()
_tracer_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def current_run() -> Run | None:
    """The declared run this code runs in, or None."""
    return _run.get()


def current_phase() -> str | None:
    """The phase set by the innermost ``budgetspan.phase(...)``, or None."""
    return _phase.get()


def current_call() -> Any:
    """The counted call this code runs inside (its SDK request, its tool body), or None."""
    return _call.get()


def enter_run(run: Run | None) -> tuple[Token[Run | None], Token[str | None]]:
    """Make ``run`` current with no phase; give the tokens to ``exit_run``."""
    return _run.set(run), _phase.set(None)


def exit_run(tokens: tuple[Token[Run | None], Token[str | None]]) -> None:
    _phase.reset(tokens[1])
    _run.reset(tokens[0])


def enter_phase(name: str | None) -> Token[str | None]:
    return _phase.set(name)


def exit_phase(token: Token[str | None]) -> None:
    _phase.reset(token)


def current_step() -> str | None:
    """The step set by the innermost ``budgetspan.step(...)``, or None (calls use their phase)."""
    return _step.get()


def enter_step(name: str | None) -> Token[str | None]:
    return _step.set(name)


def exit_step(token: Token[str | None]) -> None:
    _step.reset(token)


def current_fallback() -> tuple[str, str] | None:
    """Inside ``budgetspan.fallback(...)``: (the model replaced, why)."""
    return _fallback.get()


def enter_fallback(value: tuple[str, str] | None) -> Token[tuple[str, str] | None]:
    return _fallback.set(value)


def exit_fallback(token: Token[tuple[str, str] | None]) -> None:
    _fallback.reset(token)


def enter_call(call: Any) -> Token[Any]:
    return _call.set(call)


def exit_call(token: Token[Any]) -> None:
    _call.reset(token)


@contextmanager
def in_call() -> Iterator[bool]:
    """Mark the current context as inside a counted call; yields whether it is the outermost."""
    outer = _call.get() is None
    token = _call.set(True)
    try:
        yield outer
    finally:
        _call.reset(token)


def enter_abandonable(box: list[Callable[[], BaseException]]) -> None:
    """The code run in this context from here is a body its caller may abandon (filling ``box``);
    call it in the body's own context (``ctx.run``): an enclosing body's box still counts."""
    _abandoned.set((*_abandoned.get(), box))


def check_not_abandoned() -> None:
    """A call made by a body abandoned at its timeout (or inside one) is refused: the body stops
    at its next call instead of spending on, unseen, after its caller gave up (and after the run)."""
    for box in _abandoned.get():
        if box:
            raise box[0]()


def get_ledger() -> Ledger:
    return _ledger


def set_ledger(ledger: Ledger) -> None:
    """Use another ledger backend (e.g. a shared one). Affects runs started afterwards."""
    global _ledger
    _ledger = ledger


def set_tracer_provider(provider: TracerProvider | None) -> None:
    """The provider budgetspan's own spans go to (None: the global one)."""
    global _tracer_provider, _tracer
    _tracer_provider = provider
    _tracer = None


def get_tracer() -> Tracer:
    global _tracer
    if _tracer is None:
        provider = _tracer_provider or trace.get_tracer_provider()
        _tracer = provider.get_tracer(A.INSTRUMENTATION_SCOPE, A.VERSION)
    return _tracer


def default_workflow() -> str:
    """Workflow name of implicit runs: BUDGETSPAN_WORKFLOW (read with the configuration, once:
    ``configure()``/``set_config`` read it again), else the script's name."""
    name = get_config().workflow
    if name:
        return name
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    stem = os.path.splitext(argv0)[0]
    return stem if stem and stem not in ("-c", "-m", "") else "default"


def _warn_after_fork() -> None:
    """A forked child copies the in-memory ledger: from here on it counts apart from its parent."""
    from budgetspan.runs import registry  # (at fork time only)

    live = registry.live_runs()
    if live and isinstance(_ledger, InMemoryLedger):
        logging.getLogger("budgetspan").warning(
            "budgetspan: forked with %d live run(s) on the in-memory ledger: this process now "
            "counts its calls apart from its parent, so each process may spend the whole budget. "
            "Use budgetspan.RedisLedger for one budget across processes.",
            len(live),
        )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_warn_after_fork)


def pop_entered(entered: ContextVar[tuple[tuple[object, T], ...]], scope: object, what: str) -> T:
    """Take ``scope``'s innermost entry off a context's stack of (scope, exit state) and give its
    state. Scopes keep what an exit undoes in a context variable, not on the object, so one
    object entered from two tasks is two entries."""
    stack = entered.get()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] is scope:
            entered.set(stack[:i] + stack[i + 1 :])
            return stack[i][1]
    raise RuntimeError(f"budgetspan: a {what} was exited in a context it was not entered in")
