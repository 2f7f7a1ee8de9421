"""``budgetspan.Cache``: what a tool or function declares about caching its results.

The declaration names who may share an entry (scope), how long it is fresh (a TTL, or a data
version the caller supplies, e.g. the index build an answer came from), the tool's version, and
where entries live. The key itself is always built by budgetspan (``keys``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from budgetspan.cache.backend import Backend, MemoryCache
from budgetspan.cache.keys import Scope

DataVersion = str | Callable[[], str] | None

_default: Backend | None = None
_default_lock = threading.Lock()


def default_backend() -> Backend:
    """The process's backend for caches that name none: in memory (64 MiB) until set."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = MemoryCache()
    return _default


def set_cache_backend(backend: Backend | None) -> None:
    """Use ``backend`` (``budgetspan.MemoryCache(...)``, ``budgetspan.RedisCache(...)``) for every
    cache that names none; None goes back to a fresh in-memory one."""
    global _default
    with _default_lock:
        _default = backend


@dataclass(frozen=True)
class Cache:
    """``@budgetspan.tool(cache=budgetspan.Cache("tenant", ttl_s=600))``.

    ``scope``: ``global`` (anyone), ``tenant`` (one tenant and permission set) or ``user`` (one
    principal of one tenant, with one permission set). ``ttl_s`` and/or ``data_version`` (a string,
    or a function called on every lookup) say how long an entry is fresh: one is required.
    ``lock_wait_s``: how long callers in other processes wait for the one computing a key before
    computing it themselves. ``clock`` (seconds since the epoch) is for tests.
    """

    scope: Scope | str = Scope.TENANT
    ttl_s: float | None = None
    data_version: DataVersion = None
    version: str = "1"
    backend: Backend | None = None
    lock_wait_s: float = 5.0
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scope", Scope(self.scope))  # ValueError names the accepted values
        if self.ttl_s is None and self.data_version is None:
            raise ValueError("budgetspan.Cache: give a freshness rule, ttl_s or data_version (or both)")
        if self.ttl_s is not None and not (math.isfinite(self.ttl_s) and self.ttl_s > 0):
            raise ValueError("budgetspan.Cache: ttl_s must be a positive number of seconds")
        if not (math.isfinite(self.lock_wait_s) and self.lock_wait_s >= 0):
            raise ValueError("budgetspan.Cache: lock_wait_s must be zero or more seconds")

    @property
    def store(self) -> Backend:
        return self.backend if self.backend is not None else default_backend()

    def current_data_version(self) -> str | None:
        dv = self.data_version
        return dv() if callable(dv) else dv


__all__ = ["Cache", "default_backend", "set_cache_backend"]
