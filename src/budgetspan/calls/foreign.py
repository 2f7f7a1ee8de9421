"""GenAI spans made by other instrumentations that ``BudgetSpanProcessor`` is accounting.

Why shared: the same model or tool call is often seen by two instrumentations at once (budgetspan's
wrapper and OpenLLMetry's or the official openai-v2's, both installed under
``opentelemetry-instrument``). Counted twice, a budget of 6 model calls would stop after 3. When
budgetspan's own call starts inside such a foreign span of the same kind, it takes the foreign
span's reservation over (and the processor then leaves that span alone at its end); a foreign span
that starts inside budgetspan's own call of the same kind is not accounted at all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from opentelemetry import trace

from budgetspan import attributes as A
from budgetspan.accounting.ledger import CallKind, Reservation
from budgetspan.events import internal_error
from budgetspan.runs.run import Run


@dataclass(frozen=True, slots=True)
class ForeignCall:
    """A foreign span being accounted: the run it spends from and its reservation."""

    run: Run
    reservation: Reservation | None
    phase: str
    kind: CallKind
    step: str = ""  # budgetspan.step(...) around the call; empty: the phase


_lock = threading.Lock()
_pending: dict[tuple[int, int], ForeignCall] = {}  # (trace id, span id) -> the call


def add(trace_id: int, span_id: int, call: ForeignCall) -> None:
    with _lock:
        _pending[(trace_id, span_id)] = call


def in_flight() -> bool:
    """Whether any foreign call is being accounted (most spans end with none)."""
    return bool(_pending)


def pop(trace_id: int, span_id: int) -> ForeignCall | None:
    """The call of a span that ended, claimed by whoever pops it first (the processor or
    ``take_over``)."""
    if not _pending:  # the usual case: no foreign span in flight (every span's end asks)
        return None
    with _lock:
        return _pending.pop((trace_id, span_id), None)


def take_over(run: Run, kind: CallKind) -> ForeignCall | None:
    """The foreign call the current span stands for, if it is one of ``kind`` in ``run``; it is
    then no longer the processor's to commit (the caller commits its reservation)."""
    if not _pending:  # the usual case: no foreign span in flight
        return None
    ctx = trace.get_current_span().get_span_context()
    key = (ctx.trace_id, ctx.span_id)
    with _lock:
        found = _pending.get(key)
        if found is None or found.run is not run or found.kind is not kind:
            return None
        return _pending.pop(key)


def mark_duplicate() -> None:
    """Mark the current (foreign) span as describing a call that budgetspan's span counts."""
    try:
        trace.get_current_span().set_attribute(A.DUPLICATE_CALL, True)
    except Exception:
        internal_error("mark duplicate")


def clear() -> None:
    with _lock:
        _pending.clear()
