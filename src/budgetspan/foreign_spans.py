"""GenAI spans made by other instrumentations that ``BudgetSpanProcessor`` is accounting.

Why shared: the same model or tool call is often seen by two instrumentations at once (budgetspan's
wrapper and OpenLLMetry's or the official openai-v2's, both installed under
``opentelemetry-instrument``). Counted twice, a budget of 6 model calls would stop after 3. When
budgetspan's own call starts inside such a foreign span of the same kind, it takes the foreign
span's reservation over (and the processor then leaves that span alone at its end); a foreign span
that starts inside budgetspan's own call of the same kind is not accounted at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from opentelemetry import trace

if TYPE_CHECKING:
    from budgetspan.ledger import CallKind, Reservation
    from budgetspan.run import Run


class ForeignCall(NamedTuple):
    run: Run
    reservation: Reservation | None
    phase: str
    kind: CallKind


#: span id -> the call being accounted (never rebound: the processor holds it). Lock-free: a store, ``get`` or ``pop`` is atomic (also
#: on free-threaded builds), and a call is claimed by whoever pops it first: the processor at the
#: span's end (``pending.pop(span_id, None)``) or ``take_over``. The processor uses the dict itself:
#: a function around a single dict operation costs as much again on every foreign span.
pending: dict[int, ForeignCall] = {}


def take_over(run: Run, kind: CallKind) -> ForeignCall | None:
    """The foreign call the current span stands for, if it is one of ``kind`` in ``run``; it is
    then no longer the processor's to commit (the caller commits its reservation)."""
    if not pending:  # the usual case: no foreign span in flight, nothing to look up
        return None
    try:
        span_id = trace.get_current_span().get_span_context().span_id
    except Exception:
        return None
    found = pending.get(span_id)
    if found is None or found.run is not run or found.kind is not kind:
        return None
    return pending.pop(span_id, None)  # None: the span ended meanwhile and its end claimed it


def clear() -> None:
    pending.clear()
