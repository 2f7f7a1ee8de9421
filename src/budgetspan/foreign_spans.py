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
    from opentelemetry.trace import SpanContext

    from budgetspan.ledger import CallKind, Reservation
    from budgetspan.run import Run


class ForeignCall(NamedTuple):
    run: Run
    reservation: Reservation | None
    phase: str
    kind: CallKind
    context: SpanContext  # the span's own context object, held so that its id stays unique


#: ``id(span context)`` -> the call being accounted; never rebound (the processor holds it).
#:
#: Keyed by the identity of the span's ``SpanContext``: the SDK's span, ``get_current_span()``
#: and the ``ReadableSpan`` its end hands to processors all share that one object, and reading
#: ``span_id`` from it is a Python property call, twice per foreign span. The entry holds the
#: object, so its id cannot be reused while the entry is here.
#:
#: Lock-free: a store, ``get`` or ``pop`` is atomic (also on free-threaded builds), and a call is
#: claimed by whoever pops it first: the processor at the span's end or ``take_over``. The
#: processor uses the dict itself: a function around one dict operation costs as much again.
pending: dict[int, ForeignCall] = {}


def take_over(run: Run, kind: CallKind) -> ForeignCall | None:
    """The foreign call the current span stands for, if it is one of ``kind`` in ``run``; it is
    then no longer the processor's to commit (the caller commits its reservation)."""
    if not pending:  # the usual case: no foreign span in flight, nothing to look up
        return None
    try:
        context = trace.get_current_span().get_span_context()
    except Exception:
        return None
    found = pending.get(id(context))
    if found is None or found.context is not context or found.run is not run or found.kind is not kind:
        return None
    return pending.pop(id(context), None)  # None: the span ended meanwhile and its end claimed it


def clear() -> None:
    pending.clear()
