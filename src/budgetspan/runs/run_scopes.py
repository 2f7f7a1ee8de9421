"""The scopes above a run that carry a budget (its conversation, user, tenant, workflow, and
those of the enclosing runs): each call of the run also reserves in their current windows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from budgetspan import events
from budgetspan.accounting import scopes
from budgetspan.accounting.scopes import Scope
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
