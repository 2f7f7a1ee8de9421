"""The scopes above a run that carry a budget (its conversation, user, tenant, workflow, and
those of the enclosing runs): each call of the run also reserves in their current windows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from budgetspan import events
from budgetspan.accounting import scopes
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Reservation
from budgetspan.accounting.scopes import Scope, ScopeRef
from budgetspan.config import get_config

if TYPE_CHECKING:
    from budgetspan.runs.run import Run


def scopes_of(run: Run) -> tuple[Scope, ...]:
    """This run's scopes with a budget, then its parent's not already among them."""
    members = (
        ("conversation", run.conversation_id),
        ("user", run.user),
        ("tenant", run.tenant),
        ("workflow", run.workflow),
    )
    try:
        own = scopes.resolve(members, get_config().scopes)
    except Exception:
        events.internal_error("scope budgets")  # a failing lookup callback: the run goes on
        own = ()
    if run.parent is None or not run.parent.scopes:
        return own
    keys = {(s.kind, s.name) for s in own}
    return own + tuple(s for s in run.parent.scopes if (s.kind, s.name) not in keys)


def after_close(
    run: Run,
    kind: CallKind,
    tool: str | None,
    worst: tuple[float | None, int | None, int | None],
    in_scopes: tuple[ScopeRef, ...],
) -> Reservation:
    """A call of a run that has closed (a thread or task that outlived the block): no run limit
    applies any more, but its scope windows (the tenant's day ...) outlive the run and still
    count and refuse it, where the ledger can (``Ledger.reserve_in_scopes``)."""
    if in_scopes:
        enforce = run.mode is Mode.ENFORCE
        try:
            res = run._ledger.reserve_in_scopes(run.id, kind, in_scopes, worst, tool=tool, enforce=enforce)
        except LedgerRefused as refused:
            raise run.exhaust(refused.refusal) from None
        if res is not None:
            if res.would_refuse is not None:
                run.note_would_refuse(res.would_refuse)
            return res
    return Reservation(run.id, kind, tool, done=True)
