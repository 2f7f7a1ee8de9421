"""Scope windows on Redis: one hash per window (``budgetspan:scope:tenant:acme:2026-12-05``),
reserved and settled in the same script, and so the same round trip, as the run's hash.

A window's hash is made by the first process that uses it (``open_scope``, when the reserve script
answers ``-i``: KEYS[i] is missing) and expires at the window's end (plus ``GRACE_S``), a rolling
window's length after its first use, or ``IDLE_TTL_S`` after the last use of a scope without a
window. Nothing is kept in the process per scope: memory does not grow with the scopes in use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from budgetspan.accounting.budget import Usage
from budgetspan.accounting.ledger import Mode, Refusal
from budgetspan.accounting.redis_mirror import as_text, budget_fields, refusal_from, usage_from
from budgetspan.accounting.redis_wire import SCRIPTS, Script, Server
from budgetspan.accounting.scope_books import emit_warning
from budgetspan.accounting.scopes import ScopeRef, ScopeWarning

PREFIX = "budgetspan:scope:"


def keys(run_key: str, refs: Sequence[ScopeRef]) -> str | tuple[str, ...]:
    """The script's keys: the run's hash, then each scope window's."""
    return run_key if not refs else (run_key, *(PREFIX + ref.key for ref in refs))


def ttls(refs: Sequence[ScopeRef]) -> tuple[int, ...]:
    """What each window's use refreshes its expiry to (0: it stays, e.g. at the window's end)."""
    return tuple(ref.ttl_s() if ref.refresh else 0 for ref in refs)


def run(
    server: Server,
    script: Script,
    run_key: str,
    args: Sequence[Any],
    within: float,
    refs: Sequence[ScopeRef],
) -> Any:
    """The script's reply; a scope window it finds missing (reply ``-i``) is made and the script
    run again (at most once per window)."""
    key = keys(run_key, refs)
    reply = server.run(script, key, args, within)
    for _ in refs:
        if type(reply) is not int or reply >= -1:
            break
        open_scope(server, refs[-reply - 2], within)
        reply = server.run(script, key, args, within)
    return reply


def open_scope(server: Server, ref: ScopeRef, within: float) -> None:
    """Make the window's hash with the scope's budget, unless a peer made it first."""
    fields: dict[str, Any] = budget_fields(ref.budget, Mode.ENFORCE)
    fields["mode"] = "scope"
    if ref.limits.warn_at is not None:
        fields["warn_at"] = ref.limits.warn_at
    pairs = [item for pair in fields.items() for item in pair]
    server.run(SCRIPTS["open_scope"], PREFIX + ref.key, [ref.ttl_s(), *pairs], within)


def refusal_in(reason: bytes, limit: bytes, tool: str | None, refs: Sequence[ScopeRef]) -> Refusal | None:
    """The reply's refusal; a scope window's reads 'max_cost_usd#3#199.5' (KEYS[3] used 199.5)."""
    if b"#" not in reason:
        return refusal_from(reason, limit, tool)
    name, index, used = reason.split(b"#")
    found = refusal_from(name, limit, tool)
    assert found is not None
    return Refusal(found.reason, found.limit, found.tool, scope=refs[int(index) - 2], spent=float(used))


def warn(status: bytes, refs: Sequence[ScopeRef]) -> None:
    """The warnings a reply's status reports ('1w2:max_cost_usd:160,3:...'): once per window,
    across processes (the hash remembers it warned)."""
    if b"w" not in status:
        return
    for entry in status.split(b"w", 1)[1].split(b","):
        index, name, used = entry.split(b":")
        ref = refs[int(index) - 2]
        limit = as_text(name)
        of = float(ref.budget.limits().get(limit, 0))
        label = ref.key.rsplit(":", 1)[-1]
        warning = ScopeWarning(ref.kind, ref.name, label, limit, float(used), of, ref.limits.warn_at or 0.0)
        emit_warning(ref, warning)


def usage(server: Server, key: str, within: float) -> Usage | None:
    """A scope window's usage from its hash (None: no such window on Redis)."""
    reply = server.run(SCRIPTS["read"], PREFIX + key, ["0"], within)
    if reply == -1:
        return None
    flat = reply[3]
    return usage_from({as_text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)})
