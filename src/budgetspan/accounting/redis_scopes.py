"""Scope windows on Redis: one string per window (``budgetspan:scope:tenant:acme:2026-12-05``),
reserved and settled in the same script, and so the same round trip, as the run's hash.

A window's string holds its figures only (``redis_scripts.WINDOW``: calls, tokens, dollars, the
worst cases in flight, packed; and whether it warned): the limits come with each call from the
process's own scope budgets. A call reads all its windows with one MGET and writes each with one
SET. A window an earlier budgetspan kept as a hash is carried over by the first call that finds
it (``redis_hot_lua``: ``earlier``; its spend and expiry kept). The string is made by the window's
first call and expires at the window's end (plus ``GRACE_S``), a rolling window's length after its
first use, or ``IDLE_TTL_S`` after the last use of a scope without a window. Nothing is kept in the
process per scope: memory does not grow with the scopes in use.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from budgetspan.accounting.budget import Usage
from budgetspan.accounting.ledger import Refusal
from budgetspan.accounting.redis_mirror import as_text, hash_fields, refusal_from, usage_from
from budgetspan.accounting.redis_scripts import WINDOW, WINDOW_FIGURES
from budgetspan.accounting.redis_wire import SCRIPTS, Packed, Script, Server, packed
from budgetspan.accounting.scope_books import emit_warning
from budgetspan.accounting.scopes import ScopeRef, ScopeWarning

PREFIX = "budgetspan:scope:"


def _wired(ref: ScopeRef) -> tuple[Packed, Packed, Packed, bool]:
    """A window's key, budget (``ScopeRef.wire``) and quiet budget as sent, and whether its calls
    refresh its expiry: made by its first call, kept on the ``ScopeRef`` for the next."""
    cache = ref.cache
    if not cache:
        cache.append((packed(PREFIX + ref.key), packed(ref.wire), packed(ref.quiet), ref.refresh))
    wired: tuple[Packed, Packed, Packed, bool] = cache[0]
    return wired


#: A scope without a window has its expiry refreshed by a call when this process last did it
#: longer ago than this share of its ttl (so it outlives its last use by 90% of its ttl at least):
#: an EXPIRE per call and scope cost the server ~7k instructions (bench/README.md).
REFRESH_AFTER = 0.1
#: How many windows' last refresh a process remembers (then it forgets them all: refreshes again).
_REFRESHED_MAX = 4096
_now = time.monotonic  # (the clock of those refreshes: a test moves it)


def _stale(refreshed: dict[str, float], ref: ScopeRef, now: float) -> bool:
    last = refreshed.get(ref.key)
    return last is None or now - last >= ref.ttl_s() * REFRESH_AFTER


def note_refreshed(server: Server, refs: Sequence[ScopeRef]) -> None:
    """A reservation (granted or refused) refreshed the expiry of the windows it was asked to (``run``)."""
    now = _now()
    refreshed = server.refreshed
    for ref in refs:
        cache = ref.cache  # (made by ``run``)
        if (cache[0][3] if cache else ref.refresh) and _stale(refreshed, ref, now):
            if len(refreshed) >= _REFRESHED_MAX:
                refreshed.clear()
            refreshed[ref.key] = now


def run(
    server: Server, script: Script, run_key: str, argv: Sequence[Any], within: float, refs: Sequence[ScopeRef]
) -> Any:
    """The script on the run's key and its scope windows' keys, after ``argv`` each window's
    argument (``RESERVE_SCOPE_ARGV``): its budget and expiry (``ScopeRef.wire``, or ``quiet`` when
    this process refreshed it lately). Its ttl is set by a new window's first call, and by a
    granted call that refreshes a scope without a window."""
    if not refs:
        return server.run(script, run_key, argv, within)
    keys: list[Any] = [run_key]
    args = list(argv)
    now = None
    for ref in refs:
        cache = ref.cache
        key, wire, quiet, refresh = cache[0] if cache else _wired(ref)
        keys.append(key)
        if refresh:
            if now is None:
                now = _now()
            args.append(wire if _stale(server.refreshed, ref, now) else quiet)
        else:
            args.append(wire)
    return server.run(script, tuple(keys), args, within)


def bound(status: bytes, refs: Sequence[ScopeRef]) -> tuple[ScopeRef, ...]:
    """A granted reservation's windows, each rolling one with the record it reserved in (after
    '|' in the reply's status: 'i:birth,...', ``redis_hot_lua``), so its settlement reaches only
    that record: a rolling window's next record has the same key."""
    if b"|" not in status:
        return tuple(refs)
    out = list(refs)
    for entry in status.split(b"|", 1)[1].split(b","):
        index, born = entry.split(b":")
        i = int(index) - 2
        out[i] = dataclasses.replace(out[i], born=float(born))
    return tuple(out)


def refusal_in(reason: bytes, limit: bytes, tool: str | None, refs: Sequence[ScopeRef]) -> Refusal | None:
    """The reply's refusal; a scope window's reads 'max_cost_usd#3#199.5' (KEYS[3] used 199.5)."""
    if b"#" not in reason:
        return refusal_from(reason, limit, tool)
    name, index, used = reason.split(b"#")
    found = refusal_from(name, limit, None)
    assert found is not None
    return Refusal(found.reason, found.limit, scope=refs[int(index) - 2], spent=float(used))


def warn(status: bytes, refs: Sequence[ScopeRef]) -> None:
    """The warnings a reply's status reports ('1w2:max_cost_usd:160,3:...'): once per window,
    across processes (the window remembers it warned)."""
    if b"w" not in status:
        return
    status = status.split(b"|", 1)[0]  # (after '|': the rolling windows' births, ``born``)
    for entry in status.split(b"w", 1)[1].split(b","):
        index, name, used = entry.split(b":")
        ref = refs[int(index) - 2]
        limit = as_text(name)
        of = float(ref.budget.limits().get(limit, 0))
        label = ref.key.rsplit(":", 1)[-1]
        warning = ScopeWarning(ref.kind, ref.name, label, limit, float(used), of, ref.limits.warn_at or 0.0)
        emit_warning(ref, warning)


def usage(server: Server, key: str, within: float) -> Usage | None:
    """A scope window's usage from its string (or the hash an earlier budgetspan kept; None: no
    such window on Redis)."""
    reply = server.run(SCRIPTS["window"], PREFIX + key, (), within)
    if reply == -1:
        return None
    if reply[0] == 2:
        return usage_from(hash_fields(reply[1]))
    return usage_from(dict(zip(WINDOW_FIGURES, WINDOW.unpack(reply[1])[:-2], strict=True)))
