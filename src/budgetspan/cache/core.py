"""One cached name (a tool, a function): look up, compute once, store, and say what it saved.

The flow of a call: build the key from the current run's identity (``keys``; a scope whose
identity the run lacks, or arguments with no canonical form, are not cached: said once), read
the entry, and on a miss compute it once per key (``flight`` in this process, a short lock in the
backend across processes), measuring what the computation cost (``meter``) so every later hit
can say what it saved. A backend that fails is an outage: the call runs uncached and nothing
fails. Every request is reported once as a ``CacheRecord`` (metrics listen to it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.cache import meter
from budgetspan.cache.backend import Backend
from budgetspan.cache.flight import Flights
from budgetspan.cache.keys import (
    Identity,
    Namespace,
    NotCacheable,
    Scope,
    canonical,
    entry_key,
    plain,
    scoped_identity,
)
from budgetspan.cache.policy import Cache
from budgetspan.runs import context

R = TypeVar("R")
log = logging.getLogger(__name__)
_said: set[tuple[str, str]] = set()
_flights = Flights()
POLL_S = 0.02  # how often a caller waiting on another process's computation looks for its entry


def say_once(name: str, reason: str, detail: str) -> None:
    if (name, reason) not in _said:
        _said.add((name, reason))
        log.warning("budgetspan: %r is not cached (%s): %s; the call runs uncached", name, reason, detail)


@dataclass
class Entry:
    value: Any
    cost_usd: float | None
    duration_s: float


@dataclass
class Outcome:
    """What the cache answered one call: span attributes and the record metrics get."""

    name: str
    scope: Scope
    result: str
    reason: str | None = None
    entry: Entry | None = None  # a hit
    saved_s: float | None = None
    computed: meter.Meter | None = field(default=None, repr=False)  # a miss, while it computes

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {A.CACHE_RESULT: self.result, A.CACHE_SCOPE: self.scope.value}
        if self.reason:
            attrs[A.CACHE_REASON] = self.reason
        if self.entry is not None:
            if self.entry.cost_usd is not None:
                attrs[A.CACHE_SAVED_USD] = self.entry.cost_usd
            if self.saved_s is not None:
                attrs[A.CACHE_SAVED_S] = self.saved_s
        if self.computed is not None and self.computed.cost is not None:
            attrs[A.CACHE_COST_USD] = self.computed.cost
        return attrs

    def report(self) -> None:
        run = context.current_run()
        hit = self.entry
        events.emit(
            "on_cache",
            events.CacheRecord(
                tool=self.name,
                result=self.result,
                workflow=run.workflow if run is not None else "default",
                reason=self.reason,
                saved_usd=hit.cost_usd if hit is not None else None,
                saved_s=self.saved_s,
                run=run,
            ),
        )


def _identity() -> Identity:
    run = context.current_run()
    if run is None:
        return Identity()
    return Identity(run.tenant, run.user, run.permissions)


class Cacher:
    """The cache of one name under one ``Cache`` declaration."""

    def __init__(self, policy: Cache, name: str) -> None:
        self.policy = policy
        self.name = name
        self.scope = Scope(policy.scope)

    # key and entries ----------------------------------------------------------------------
    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any], backend: Backend) -> str:
        """The entry's digest; NotCacheable (said once) or a backend error (an outage)."""
        who = _identity()
        try:
            raw = canonical(args, kwargs)
            scoped_identity(self.scope, who)  # before any backend work: the run may lack it
        except NotCacheable as e:
            say_once(self.name, e.reason, str(e))
            raise
        tenant = who.tenant if self.scope is not Scope.GLOBAL else None
        generations = backend.generations(Namespace(self.name, self.policy.version, tenant).counters())
        data_version = self.policy.current_data_version()
        return entry_key(self.scope, who, self.name, self.policy.version, data_version, raw, generations)

    def encode(self, value: Any, m: meter.Meter, duration_s: float) -> bytes | None:
        ttl = self.policy.ttl_s
        expires = self.policy.clock() + ttl if ttl is not None else None
        try:
            doc = {"v": plain(value), "c": m.cost, "d": duration_s, "x": expires}
            return orjson.dumps(doc)
        except (NotCacheable, TypeError, orjson.JSONEncodeError):
            say_once(
                self.name,
                "value",
                "its result is not plain JSON data (None, bool, numbers, str, lists, dicts)",
            )
            return None

    def decode(self, data: bytes | None) -> Entry | None:
        """The entry, or None when absent, unreadable or past its freshness."""
        if data is None:
            return None
        try:
            doc = orjson.loads(data)
            expires = doc["x"]
            if expires is not None and self.policy.clock() >= expires:
                return None
            return Entry(doc["v"], doc["c"], float(doc["d"]))
        except Exception:
            return None

    def _outage(self, where: str) -> Outcome:
        say_once(self.policy.store.name, "backend", f"the {where} failed (backend unavailable)")
        return Outcome(self.name, self.scope, A.CACHE_RESULT_UNAVAILABLE, "backend")

    def _hit(self, entry: Entry, t0: float) -> Outcome:
        run = context.current_run()
        if run is not None:
            run.check()  # a stopped or cancelled run gets nothing more, cached or not
        saved = max(0.0, entry.duration_s - (time.monotonic() - t0))
        return Outcome(self.name, self.scope, A.CACHE_RESULT_HIT, entry=entry, saved_s=saved)

    # sync ---------------------------------------------------------------------------------
    def call(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        compute: Callable[[Outcome], R],
        serve: Callable[[Outcome], R],
    ) -> R:
        """``serve(outcome)`` a hit, or return ``compute(outcome)`` (the call, run as usual;
        ``outcome.attributes()`` is what to put on its span)."""
        t0 = time.monotonic()
        backend = self.policy.store
        try:
            key = self.key(args, kwargs, backend)
            found = self.decode(backend.get(key))
        except NotCacheable as e:
            return self._uncached(compute, Outcome(self.name, self.scope, A.CACHE_RESULT_SKIPPED, e.reason))
        except Exception:
            return self._uncached(compute, self._outage("lookup"))
        if found is not None:
            return self._serve(serve, self._hit(found, t0))
        flight = _flights.join(key)
        if flight is not None:  # another thread computes it (waited for as long as another process would be)
            found = self.decode(Flights.wait(flight, self.policy.lock_wait_s))
            if found is not None:
                return self._serve(serve, self._hit(found, t0))
            return self._uncached(compute, Outcome(self.name, self.scope, A.CACHE_RESULT_MISS))
        stored: bytes | None = None
        try:
            stored = self._wait_other_process(backend, key)
            found = self.decode(stored)
            if found is not None:
                return self._serve(serve, self._hit(found, t0))
            value, stored = self._compute(compute, backend, key)
            return value
        finally:
            _flights.land(key, stored)

    def _wait_other_process(self, backend: Backend, key: str) -> bytes | None:
        """Take the backend's lock for ``key``; if another process holds it, wait (up to
        ``lock_wait_s``) for its entry. None: compute here."""
        try:
            if backend.try_lock(key, self.policy.lock_wait_s + 1.0):
                return None
            deadline = time.monotonic() + self.policy.lock_wait_s
            while time.monotonic() < deadline:
                time.sleep(POLL_S)
                data = backend.get(key)
                if self.decode(data) is not None:
                    return data
        except Exception:
            pass  # an outage here: compute, and the store will say so
        return None

    def _compute(self, compute: Callable[[Outcome], R], backend: Backend, key: str) -> tuple[R, bytes | None]:
        outcome = Outcome(self.name, self.scope, A.CACHE_RESULT_MISS)
        m, token = meter.start()
        outcome.computed = m
        t = time.monotonic()
        try:
            value = compute(outcome)
        finally:
            meter.stop(token)
            self._unlock(backend, key)
        data = self.encode(value, m, time.monotonic() - t)
        if data is not None:
            try:
                backend.set(key, data, self.policy.ttl_s)
            except Exception:
                self._outage("store")
        outcome.report()
        return value, data

    @staticmethod
    def _unlock(backend: Backend, key: str) -> None:
        try:
            backend.unlock(key)
        except Exception:
            pass  # the lock expires by itself

    @staticmethod
    def _uncached(compute: Callable[[Outcome], R], outcome: Outcome) -> R:
        outcome.report()
        return compute(outcome)

    def _serve(self, serve: Callable[[Outcome], R], outcome: Outcome) -> R:
        outcome.report()
        return serve(outcome)

    # asyncio ------------------------------------------------------------------------------
    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A backend operation from a coroutine: in a thread for a networked backend, so a slow
        one never blocks the event loop."""
        if self.policy.store.name == "memory":
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def acall(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        compute: Callable[[Outcome], Awaitable[R]],
        serve: Callable[[Outcome], R],
    ) -> R:
        """``call`` for coroutines; single flight per event loop."""
        t0 = time.monotonic()
        backend = self.policy.store
        try:
            key = await self._io(self.key, args, kwargs, backend)
            found = self.decode(await self._io(backend.get, key))
        except NotCacheable as e:
            return await self._auncached(
                compute, Outcome(self.name, self.scope, A.CACHE_RESULT_SKIPPED, e.reason)
            )
        except Exception:
            return await self._auncached(compute, self._outage("lookup"))
        if found is not None:
            return self._serve(serve, self._hit(found, t0))
        flight = _flights.ajoin(key)
        if flight is not None:  # another task of this loop computes it
            try:
                found = self.decode(await asyncio.wait_for(asyncio.shield(flight), self.policy.lock_wait_s))
            except TimeoutError:
                found = None
            if found is not None:
                return self._serve(serve, self._hit(found, t0))
            return await self._auncached(compute, Outcome(self.name, self.scope, A.CACHE_RESULT_MISS))
        stored: bytes | None = None
        try:
            stored = await self._await_other_process(backend, key)
            found = self.decode(stored)
            if found is not None:
                return self._serve(serve, self._hit(found, t0))
            value, stored = await self._acompute(compute, backend, key)
            return value
        finally:
            _flights.aland(key, stored)

    async def _await_other_process(self, backend: Backend, key: str) -> bytes | None:
        try:
            if await self._io(backend.try_lock, key, self.policy.lock_wait_s + 1.0):
                return None
            deadline = time.monotonic() + self.policy.lock_wait_s
            while time.monotonic() < deadline:
                await asyncio.sleep(POLL_S)
                data: bytes | None = await self._io(backend.get, key)
                if self.decode(data) is not None:
                    return data
        except Exception:
            pass
        return None

    async def _acompute(
        self, compute: Callable[[Outcome], Awaitable[R]], backend: Backend, key: str
    ) -> tuple[R, bytes | None]:
        outcome = Outcome(self.name, self.scope, A.CACHE_RESULT_MISS)
        m, token = meter.start()
        outcome.computed = m
        t = time.monotonic()
        try:
            value = await compute(outcome)
        finally:
            meter.stop(token)
            try:
                await self._io(backend.unlock, key)
            except Exception:
                pass
        data = self.encode(value, m, time.monotonic() - t)
        if data is not None:
            try:
                await self._io(backend.set, key, data, self.policy.ttl_s)
            except Exception:
                self._outage("store")
        outcome.report()
        return value, data

    @staticmethod
    async def _auncached(compute: Callable[[Outcome], Awaitable[R]], outcome: Outcome) -> R:
        outcome.report()
        return await compute(outcome)

    def invalidate(self, *, version: str | None = None, tenant: str | None = None) -> None:
        invalidate(self.name, version=version, tenant=tenant, backend=self.policy.store)


def invalidate(
    tool: str | None = None,
    *,
    version: str | None = None,
    tenant: str | None = None,
    backend: Backend | None = None,
) -> None:
    """Make entries unreachable: every entry of ``tool``; of one ``version`` of it; of one
    ``tenant`` (of ``tool``, or of every tool when no tool is named). Raises if the backend is
    down: an invalidation that did not happen must not look as if it had."""
    from budgetspan.cache.keys import digest
    from budgetspan.cache.policy import default_backend

    store = backend if backend is not None else default_backend()
    if tool is None and tenant is None:
        raise ValueError("invalidate: name a tool, a tenant, or both")
    if tool is None:
        store.bump(digest("tenant", tenant))
    elif tenant is not None:
        store.bump(digest("tool-tenant", tool, tenant))
    elif version is not None:
        store.bump(digest("version", tool, version))
    else:
        store.bump(digest("tool", tool))


__all__ = ["Cacher", "Entry", "Outcome", "invalidate"]
