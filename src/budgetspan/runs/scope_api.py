"""The public functions of budgets above the run: set a scope's budget, look budgets up, and ask
what a scope has spent in a window (``budgetspan.spend``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from budgetspan.accounting import windows
from budgetspan.accounting.budget import Budget, Usage
from budgetspan.accounting.scopes import (
    REGISTRY,
    SCOPE_KINDS,
    ScopeBudget,
    ScopeWarning,
    kept_after,
    scope_key,
)
from budgetspan.accounting.windows import Window, parse_window
from budgetspan.config import get_config
from budgetspan.runs import context


def set_scope_budget(
    kind: str,
    name: str,
    budget: Budget | None,
    *,
    window: str | None = None,
    tz: str = "UTC",
    warn_at: float | None = None,
    on_warn: Callable[[ScopeWarning], Any] | None = None,
) -> None:
    """Give a scope (``kind``: conversation, user, tenant or workflow) a budget over a window
    (hour, day, month, rolling-hour/-day/-month, or None for the scope's whole life). ``name``
    "default" applies to every name of the kind without its own budget; ``budget`` None removes it.

    ``budgetspan.set_scope_budget("tenant", "acme", Budget(max_cost_usd=200), window="day",
    warn_at=0.8)``: acme may spend $200 per calendar day (UTC); a warning at $160.
    """
    scope = None if budget is None else ScopeBudget(budget, parse_window(window, tz), warn_at, on_warn)
    REGISTRY.set(kind, name, scope)


def set_scope_lookup(
    lookup: Callable[[str, str], ScopeBudget | Budget | None] | None, *, ttl_s: float | None = 300.0
) -> None:
    """Look scope budgets up (``lookup(kind, name)``, e.g. from the customer's plan) for the scopes
    with none set in code. Answers are cached (``scopes.CACHE_SIZE``) for ``ttl_s`` seconds (None:
    until the next ``set_scope_lookup``), so a changed plan applies to the runs that start after;
    runs starting together wait for one lookup of a scope. The lookup runs when a run starts, in
    its thread (in async code, on the event loop): keep it quick or answer from a cache. A lookup
    that raises is logged; the scope falls back (config, then default) and it is asked again
    after ``RETRY_FAILED_S`` (10 s)."""
    if lookup is not None and inspect.iscoroutinefunction(lookup):
        raise TypeError(
            "set_scope_lookup: an async function cannot be awaited where a run starts (and would "
            "leave every scope without its budget); pass a function that answers from a cache"
        )
    REGISTRY.set_lookup(lookup, ttl_s)


def spend(
    *,
    tenant: str | None = None,
    user: str | None = None,
    conversation: str | None = None,
    workflow: str | None = None,
    window: str | None = None,
    tz: str | None = None,
    at: float | None = None,
) -> Usage:
    """What one scope has used in its current window (or the window ``at`` a Unix time falls in)
    in the current ledger: ``budgetspan.spend(tenant="acme", window="day").cost_usd``.

    ``window`` and ``tz`` default to the scope's budget's; a scope with a budget and no record yet
    is all zeros. Only scopes with a budget are kept: one with no budget in this process is read
    from the ``window`` named (another process's budget keeps it on Redis), a ValueError when it
    names none or there is no record (0 would be a figure not known, given as none spent).
    ``at=`` a window whose record is no longer kept (ended before the last one) is a ValueError.
    """
    given = zip(SCOPE_KINDS, (conversation, user, tenant, workflow), strict=True)
    named = [(k, str(v)) for k, v in given if v is not None]
    if any(not v for _, v in named):
        raise ValueError("spend(): an empty name names no scope (a run with tenant='' has no tenant)")
    if len(named) != 1:
        raise ValueError("spend(): name exactly one of tenant=, user=, conversation=, workflow=")
    kind, name = named[0]
    limits = REGISTRY.find(kind, name, get_config().scopes)
    if limits is None and window is None:
        raise ValueError(f"spend(): {kind} {name} has no budget here: {_not_kept(kind)}")
    own = limits.window if limits is not None else None
    chosen = _asked(own or Window(), window, tz)
    if own is not None and not _same(own, chosen):
        # Only the budget's window is kept: another one's figures would read 0 (or, for the same
        # date in another zone, this window's figures under the wrong name).
        raise ValueError(
            f"spend(): {kind} {name}: its budget's window is {_said(own)}; no other is kept "
            f"(ask window={_text(own)!r}, tz={own.tz!r})"
        )
    if chosen.rolling and at is not None:
        raise ValueError(
            f"spend(): {kind} {name}: a rolling window is kept only while it lasts; at= names a calendar window"
        )
    bounds = chosen.bounds(at)
    if at is not None and bounds.end is not None and bounds.end + kept_after(chosen, bounds) <= windows.now():
        # (its record expired: 0 would be a figure not known, given as none spent)
        raise ValueError(
            f"spend(): {kind} {name}: the {_said(chosen)} window at {at!r} is no longer kept "
            "(a window's record is kept until the end of the window after it)"
        )
    found = context.get_ledger().scope_usage(scope_key(kind, name, bounds.label))
    if found is None and limits is None:  # (no budget here, no record: nothing says it was kept)
        raise ValueError(
            f"spend(): {kind} {name} has no budget here and no {_said(chosen)} record: {_not_kept(kind)}"
        )
    return found if found is not None else Usage()


def _not_kept(kind: str) -> str:
    """Why a scope without a budget is not answered with 0: only scopes with a budget are kept."""
    traces = f"; budgetspan report --by {kind} reads it from traces" if kind in ("tenant", "user") else ""
    return (
        f"only scopes with a budget are kept (give it one, or every {kind} a 'default'; another "
        f"process's budget: name its window=){traces}"
    )


def _text(w: Window) -> str:
    return "none" if w.period is None else ("rolling-" if w.rolling else "") + w.period


def _asked(own: Window, window: str | None, tz: str | None) -> Window:
    """The window ``spend()`` is asked about: the budget's, with what the caller names changed."""
    if window is None and tz is None:
        return own
    return parse_window(_text(own) if window is None else window, tz or own.tz)


def _same(own: Window, asked: Window) -> bool:
    calendar = own.period is not None and not own.rolling  # (its zone names its records)
    return (own.period, own.rolling) == (asked.period, asked.rolling) and (not calendar or own.tz == asked.tz)


def _said(w: Window) -> str:
    return w.adjective if w.period is None or w.rolling else f"{w.adjective} ({w.tz})"
