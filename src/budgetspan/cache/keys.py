"""Cache keys, built by budgetspan and never by hand.

A key names everything an answer may depend on: the declared scope with the identity it needs
(tenant; tenant, principal and permission set), the tool's name and version, the caller's data
version, the canonical arguments, and the generations that invalidation bumps. Two calls share
an entry only if every one of these is equal, so a key built from the request alone (the way
caches have leaked across teams and users) cannot happen here.

The key is a SHA-256 digest: no argument text, tenant or user id lands in a backend's key names.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson


class Scope(str, Enum):
    """Who may share an entry. ``user`` entries are also split by permission set."""

    GLOBAL = "global"  # anyone: public, deterministic data only
    TENANT = "tenant"  # callers of one tenant
    USER = "user"  # one principal of one tenant, with one permission set


@dataclass(frozen=True)
class Identity:
    """Who is asking: taken from the current run (``budgetspan.run(tenant=, user=, permissions=)``)."""

    tenant: str | None = None
    user: str | None = None
    permissions: frozenset[str] = frozenset()


class NotCacheable(Exception):
    """Why a call is not cached (the call still runs): ``reason`` is a bounded label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def scoped_identity(scope: Scope, who: Identity) -> list[Any]:
    """The identity part of a key for ``scope``; NotCacheable when the run lacks what it needs
    (never widened to a broader scope)."""
    if scope is Scope.GLOBAL:
        return ["global"]
    if not who.tenant:
        raise NotCacheable("no_tenant", f"scope {scope.value!r} needs a run with a tenant")
    if scope is Scope.TENANT:
        # The permission set is part of the key at every scope but global: two callers of one
        # tenant with different rights never share an answer filtered by those rights.
        return ["tenant", who.tenant, sorted(who.permissions)]
    if not who.user:
        raise NotCacheable("no_user", "scope 'user' needs a run with a user")
    return ["user", who.tenant, who.user, sorted(who.permissions)]


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data with a single spelling, or NotCacheable.

    Accepted: None, bool, int, finite float, str, and lists, tuples and string-keyed mappings of
    these. Anything else (objects, sets, bytes, NaN) has no stable spelling: its ``repr`` may carry
    an address, and two equal sets may iterate in two orders across processes.
    """
    if depth > 32:
        raise NotCacheable("arguments", "arguments nested deeper than 32 levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotCacheable("arguments", "a float argument that is not finite")
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise NotCacheable("arguments", "a mapping argument with keys that are not strings")
        return {k: plain(value[k], depth + 1) for k in sorted(value)}
    raise NotCacheable("arguments", f"an argument of type {type(value).__name__} has no canonical form")


def canonical(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    """Stable JSON of a call's arguments (sorted keys, no whitespace); NotCacheable if it has none."""
    data = [plain(list(args)), plain(dict(kwargs))]
    try:
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError) as e:  # ints beyond 64 bits
        raise NotCacheable("arguments", "arguments JSON cannot spell") from e


def digest(*parts: Any) -> str:
    """SHA-256 hex of the parts' canonical JSON."""
    return hashlib.sha256(orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Namespace:
    """The generation counters a key depends on: bump one and every entry under it is gone."""

    tool: str
    version: str
    tenant: str | None

    def counters(self) -> list[str]:
        return list(_counters(self.tool, self.version, self.tenant))


@functools.lru_cache(maxsize=4096)
def _counters(tool: str, version: str, tenant: str | None) -> tuple[str, ...]:
    """The counter names of a namespace (four digests: worked out once per namespace)."""
    names = [digest("tool", tool), digest("version", tool, version)]
    if tenant:
        names += [digest("tenant", tenant), digest("tool-tenant", tool, tenant)]
    return tuple(names)


def entry_key(
    scope: Scope,
    who: Identity,
    tool: str,
    version: str,
    data_version: str | None,
    args: bytes,
    generations: list[int],
) -> str:
    """The digest one entry is stored under (raises NotCacheable, see ``scoped_identity``)."""
    return digest(
        "budgetspan-cache-1",
        scoped_identity(scope, who),
        tool,
        version,
        data_version,
        args.decode(),
        generations,
    )


__all__ = [
    "Identity",
    "Namespace",
    "NotCacheable",
    "Scope",
    "canonical",
    "digest",
    "entry_key",
    "plain",
    "scoped_identity",
]
