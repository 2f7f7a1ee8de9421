"""Budgets above the run: per conversation, user, tenant and workflow, over a time window.

A run belongs to scopes (its conversation, user, tenant and workflow). A scope's budget comes from
code (``set_scope_budget``), from a lookup callback (``set_scope_lookup``, e.g. the customer's
plan) or from ``BUDGETSPAN_CONFIG`` (``ScopeTables``), in that order; a name without its own entry
takes the kind's ``default``. A call reserves in its run and in every scope window it belongs to,
in one step (the ledgers), and the first limit it would pass refuses it.

Nothing here is kept per scope name except what is asked for: the config tables stay the raw TOML
tables and a scope's budget is built when a run of it starts (a bounded cache keeps the latest).
"""

from __future__ import annotations

import inspect
import math
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from budgetspan import events
from budgetspan.accounting import windows
from budgetspan.accounting.budget import LIMIT_NAMES, LOOP_LIMIT_NAMES, Budget, Usage, as_dollars, as_figure
from budgetspan.accounting.windows import NO_WINDOW, Bounds, Window, parse_window

#: The scope kinds, innermost first: the order a call reserves in (after its run).
SCOPE_KINDS = ("conversation", "user", "tenant", "workflow")
#: The ``BUDGETSPAN_CONFIG`` section of each kind (workflows: ``[workflows.NAME.window]``).
SECTIONS = {"conversations": "conversation", "users": "user", "tenants": "tenant"}
#: Keys of a scope table besides the limits.
SCOPE_KEYS = ("window", "tz", "warn_at")
#: The limits a scope's budget has (the wall clock, tool and loop limits are a run's only).
SCOPE_LIMIT_NAMES = tuple(n for n in LIMIT_NAMES if n != "max_wall_clock_s")
#: What a scope table takes, for the configuration's error messages.
SCOPE_FORM = (
    f"a scope table of limits ({', '.join(SCOPE_LIMIT_NAMES)}), window (hour, day, month, "
    "rolling-hour, rolling-day, rolling-month or none), tz (an IANA zone) and warn_at (a share in (0, 1])"
)
#: A fixed window's record outlives the window's end by this much at least (late settlements
#: land), and by the next window's length when longer: yesterday's spend can be asked all of today.
GRACE_S = 3600
#: A rolling window's length, as the explanation says it.
ROLLING_TEXT = {"hour": "1 h", "day": "24 h", "month": "30 days"}
#: How long a failed lookup counts as no answer before it is asked again (``_Recent``).
RETRY_FAILED_S = 10.0
#: Scope budgets built from config or the lookup, kept for the runs that start next.
CACHE_SIZE = 4096


@dataclass(frozen=True)
class ScopeWarning:
    """A scope reached its warning threshold (once per scope window)."""

    kind: str
    name: str
    window: str
    limit: str
    used: float
    of: float
    warn_at: float


@dataclass(frozen=True)
class ScopeBudget:
    """A scope's limits (a ``Budget``), its window and an optional warning threshold (a share
    of any limit, e.g. 0.8) with a callback."""

    budget: Budget
    window: Window = NO_WINDOW
    warn_at: float | None = None
    on_warn: Callable[[ScopeWarning], Any] | None = None

    def __post_init__(self) -> None:
        b = self.budget
        run_only = [n for n in ("max_wall_clock_s", *LOOP_LIMIT_NAMES) if getattr(b, n) is not None]
        run_only += [n for n in ("tools", "reserve_for_final") if getattr(b, n)]
        if run_only:
            raise ValueError(f"{', '.join(run_only)} applies to runs only, not to a scope's budget")
        w = self.warn_at
        if w is not None and not (isinstance(w, (int, float)) and 0 < w <= 1):
            raise ValueError(f"warn_at must be a share in (0, 1], got {w!r}")


@dataclass(frozen=True, slots=True)
class ScopeRef:
    """One scope window a call reserves in: its ledger key and what limits it."""

    kind: str
    name: str
    key: str
    limits: ScopeBudget
    end: float | None
    #: How long its record outlives ``end`` (``kept_after``).
    grace_s: int = GRACE_S
    #: The budget as the Redis scripts take it (``wire``), packed; ``quiet``: the same without the
    #: refresh of its expiry (a scope without a window refreshed lately by this process).
    wire: bytes = b""
    quiet: bytes = b""
    #: What a ledger keeps of this window for its calls, made by its first (the Redis ledger: its
    #: key and budget as sent, ``redis_scopes``): a window's calls rebuild nothing.
    cache: list[Any] = field(default_factory=list, compare=False, hash=False, repr=False)
    #: ``RedisLedger``: the birth of the record of a rolling window a call reserved in (its next
    #: record has the same key): the call's settlement reaches that record only.
    born: float | None = None

    @property
    def budget(self) -> Budget:
        return self.limits.budget

    def ttl_s(self) -> int:
        """How long the record lives: to the window's end (plus ``grace_s``), a rolling window's
        length from its first use, or ``IDLE_TTL_S`` after the last use without a window."""
        w = self.limits.window
        if w.ttl_s is not None:
            return w.ttl_s
        if self.end is None:
            return windows.IDLE_TTL_S
        return max(1, int(self.end - windows.now()) + self.grace_s)

    @property
    def refresh(self) -> bool:
        """A scope without a window lives on while in use (its expiry moves with each call)."""
        return self.limits.window.period is None

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


def explain_scope(
    ref: ScopeRef, reason: str, limit: float | None, spent: float | None, worst: float | None
) -> str:
    """'Stopped: tenant acme has spent $200.00 of its $200 daily budget; resets at 00:00 UTC.'"""
    window = ref.limits.window
    adjective = window.adjective
    lim = 0.0 if limit is None else float(limit)
    used = 0.0 if spent is None else float(spent)
    if reason == "max_cost_usd":
        head = f"has spent {as_dollars(used)} of its ${as_figure(lim)} {adjective} budget"
        if worst:
            head += f" (the next call could have cost up to {as_dollars(worst)} more)"
    elif reason.endswith("_tokens"):
        what = reason.removeprefix("max_").replace("_", " ")
        head = f"has used {used:,.0f} of its {lim:,.0f} {adjective} {what}"
        if worst:
            head += f" (the next call could have used up to {worst:,.0f} more)"
    else:
        what = reason.removeprefix("max_").removeprefix("tool.").replace("_", " ")
        head = f"has made {used:,.0f} of its {lim:,.0f} {adjective} {what}"
    resets = window.resets(ref.end)
    if not resets and window.rolling and window.period:
        resets = f"resets {ROLLING_TEXT[window.period]} after the window's first call"
    return f"Stopped: {ref.describe()} {head}" + (f"; {resets}." if resets else ".")


def share_used(budget: Budget, usage: Usage) -> tuple[str, float, float] | None:
    """The limit most used up, as (name, used, limit), for the warning threshold."""
    best: tuple[str, float, float] | None = None
    for name, value in budget.limits().items():
        if name == "max_wall_clock_s" or not value:
            continue
        used = usage.value_of(name)
        if best is None or used / value > best[1] / best[2]:
            best = (name, used, float(value))
    return best


def scope_budget_from_table(
    where: str, table: Mapping[str, Any], check: Callable[..., dict[str, Any]]
) -> ScopeBudget:
    """A ``ScopeBudget`` from one config table (limits, ``window``, ``tz``, ``warn_at``);
    ``check`` validates the limits (config's ``_limits_table``)."""
    limits = {k: v for k, v in table.items() if k not in SCOPE_KEYS}
    if "max_wall_clock_s" in limits:
        raise ValueError(f"{where}: max_wall_clock_s applies to runs only; expected {SCOPE_FORM}")
    limits = check(where, limits, SCOPE_LIMIT_NAMES)
    tz = table.get("tz", "UTC")
    warn = table.get("warn_at")
    try:
        window = parse_window(str(table.get("window", "")), str(tz))
        return ScopeBudget(Budget(**limits), window, None if warn is None else float(warn))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


class _Recent:
    """The scope budgets last found, by (kind, name): bounded (the oldest dropped first), safe from
    any thread, each kept ``ttl_s`` (None: until cleared). A missing one is made outside the lock (a
    lookup may be slow) and once: the runs that need it meanwhile wait for that answer instead of
    each asking the plans database (20 runs of a new tenant at once made 20 lookups). A failed
    lookup is remembered as no answer for ``RETRY_FAILED_S`` (the scope falls back meanwhile):
    with the plans database down, each run start waited for it to fail again, and the runs
    waiting on one lookup asked again one after another."""

    def __init__(self, ttl_s: float | None = None) -> None:
        self._found: OrderedDict[tuple[str, str], tuple[ScopeBudget | None, float]] = OrderedDict()
        self._making: dict[tuple[str, str], threading.Event] = {}
        self._generation = 0  # a clear() drops the answers being made too
        self.ttl_s = ttl_s
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], make: Callable[[], ScopeBudget | None]) -> ScopeBudget | None:
        while True:
            with self._lock:
                got = self._found.get(key)
                if got is not None and time.monotonic() < got[1]:
                    self._found.move_to_end(key)
                    return got[0]
                other = self._making.get(key)
                if other is None:
                    self._making[key] = mine = threading.Event()
                    generation = self._generation
                    break
            other.wait()  # then take its answer (or its failure, remembered)
        try:
            try:
                found = make()
            except Exception:
                self._keep(key, None, generation, RETRY_FAILED_S)
                raise
            self._keep(key, found, generation, self.ttl_s)
            return found
        finally:
            with self._lock:
                if self._making.get(key) is mine:
                    del self._making[key]
            mine.set()

    def _keep(
        self, key: tuple[str, str], found: ScopeBudget | None, generation: int, ttl_s: float | None
    ) -> None:
        with self._lock:
            if generation == self._generation:
                self._found[key] = (found, math.inf if ttl_s is None else time.monotonic() + ttl_s)
                self._found.move_to_end(key)
                if len(self._found) > CACHE_SIZE:
                    self._found.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._found.clear()
            self._generation += 1


class ScopeTables:
    """The scope sections of ``BUDGETSPAN_CONFIG``: raw tables by kind and name (validated when
    read), turned into ``ScopeBudget``s only for the scopes that runs use (cached, bounded)."""

    def __init__(
        self,
        tables: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        build: Callable[[str, Mapping[str, Any]], ScopeBudget] | None = None,
    ) -> None:
        self.tables = tables or {}
        self._build = build
        self._built = _Recent()

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables.values())

    def find(self, kind: str, name: str, default: bool = True) -> ScopeBudget | None:
        """The name's table, else (``default``) the kind's default table."""
        by_name = self.tables.get(kind)
        if not by_name or self._build is None or not (default or name in by_name):
            return None
        build = self._build

        def built() -> ScopeBudget | None:
            table = by_name.get(name)
            if table is None:
                table = by_name.get("default")
            return None if table is None else build(f"[{kind}.{name}]", table)

        return self._built.get((kind, name), built)


class ScopeRegistry:
    """Scope budgets set in code and the lookup callback (process-wide: ``REGISTRY``)."""

    def __init__(self) -> None:
        self._code: dict[tuple[str, str], ScopeBudget] = {}
        self._lookup: Callable[[str, str], ScopeBudget | Budget | None] | None = None
        self._looked_up = _Recent()
        self._lock = threading.Lock()

    def set(self, kind: str, name: str, scope: ScopeBudget | None) -> None:
        if kind not in SCOPE_KINDS:
            raise ValueError(f"scope kind {kind!r}: expected one of {', '.join(SCOPE_KINDS)}")
        name = str(name)  # a database's 123 is the run's tenant "123"
        if not name:
            raise ValueError(f"{kind} '': an empty name names no scope (a run with {kind}='' has none)")
        with self._lock:
            if scope is None:
                self._code.pop((kind, name), None)
            else:
                self._code[(kind, name)] = scope
            self._looked_up.clear()

    def set_lookup(
        self, lookup: Callable[[str, str], ScopeBudget | Budget | None] | None, ttl_s: float | None = None
    ) -> None:
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"set_scope_lookup(ttl_s={ttl_s!r}): a number of seconds above 0, or None")
        with self._lock:
            self._lookup = lookup
            self._looked_up.clear()
            self._looked_up.ttl_s = ttl_s

    def clear(self) -> None:
        with self._lock:
            self._code.clear()
            self._lookup = None
            self._looked_up.clear()

    def find(self, kind: str, name: str, tables: ScopeTables | None = None) -> ScopeBudget | None:
        """Code, then the lookup, then config; a name without an entry takes the kind's default
        (code's, then config's: a default set in code is not overridden by the file's)."""
        own = self._code.get((kind, name))
        if own is not None:
            return own
        try:
            found = self._find_looked_up(kind, name)
        except Exception:  # the plans database is down: this scope falls back, the others hold
            events.internal_error("scope budgets")
            found = None
        if found is None and tables is not None:
            found = tables.find(kind, name, default=False)
        if found is None:
            found = self._code.get((kind, "default"))
        if found is None and tables is not None:
            found = tables.find(kind, name)
        return found

    def _find_looked_up(self, kind: str, name: str) -> ScopeBudget | None:
        lookup = self._lookup
        if lookup is None:
            return None

        def looked_up() -> ScopeBudget | None:
            got = lookup(kind, name)
            if inspect.isawaitable(got):
                if inspect.iscoroutine(got):
                    got.close()  # (not left to warn "never awaited")
                raise TypeError(
                    f"scope lookup({kind!r}, {name!r}) returned an awaitable: it cannot be awaited here"
                )
            if got is None or isinstance(got, ScopeBudget):
                return got
            if isinstance(got, Budget):
                return ScopeBudget(got)
            raise TypeError(f"scope lookup({kind!r}, {name!r}): a Budget, ScopeBudget or None, got {got!r}")

        return self._looked_up.get((kind, name), looked_up)


REGISTRY = ScopeRegistry()


class Scope:
    """A scope a run belongs to that has a budget. ``ref`` gives its current window (the same
    object until the window ends: a call makes nothing new for its scopes)."""

    __slots__ = ("_ref", "kind", "limits", "name")

    def __init__(self, kind: str, name: str, limits: ScopeBudget) -> None:
        self.kind, self.name, self.limits = kind, name, limits
        self._ref: ScopeRef | None = None

    def ref(self) -> ScopeRef:
        ref = self._ref
        end = None if ref is None else ref.end  # (None too for a rolling window: its own end)
        if ref is not None and (end is None or windows.now() < end):
            return ref
        bounds = self.limits.window.bounds()
        key = scope_key(self.kind, self.name, bounds.label)
        # A rolling window's end follows its first call, which the ledger knows, not this run.
        end = None if self.limits.window.rolling else bounds.end
        limits, grace = self.limits, kept_after(self.limits.window, bounds)
        ref = self._ref = ScopeRef(
            self.kind,
            self.name,
            key,
            limits,
            end,
            grace,
            wire(limits, limits.window.period is None, end, grace),
            wire(limits, False, end, grace),
        )
        return ref


#: A scope's limits as the Redis scripts take them (``wire``): ``WINDOW_LIMITS``' order (the wall
#: clock is a run's only), little-endian doubles.
WINDOW_LIMITS = (
    "max_model_calls",
    "max_tool_calls",
    "max_steps",
    "max_retries",
    "max_wall_clock_s",
    "max_cost_usd",
    "max_input_tokens",
    "max_output_tokens",
    "max_total_tokens",
)
_WINDOW_PACK = struct.Struct(f"<{2 * len(WINDOW_LIMITS) + 5}d")


def kept_after(window: Window, bounds: Bounds) -> int:
    """How long a fixed window's record outlives its end: the length of the window after it (so
    the window before the current one can be read all of it: ``spend(at=yesterday)``; a 23-hour
    day or a February kept their own length went 1 h or 3 days early), ``GRACE_S`` at least."""
    if bounds.end is None or window.rolling:
        return GRACE_S
    return max(GRACE_S, math.ceil(window.following(bounds).end or 0.0) - math.floor(bounds.end))


def wire(limits: ScopeBudget, refresh: bool, end: float | None = None, grace_s: int = GRACE_S) -> bytes:
    """What the scripts need of a scope window's budget, packed once per window: its limits (NaN:
    not set), the figure at which each warns (``warn_at`` × a limit above 0; NaN: none), whether
    it warns at all, whether each use refreshes its expiry (a scope without a window), and its
    expiry as ``ScopeRef.ttl_s`` reckons it: a fixed window's ``end`` (NaN: none) plus
    ``grace_s``, or else a constant ttl (the script reckons it against the call's scope clock);
    whether it is rolling (its next record has the same key: ``ScopeRef.born``)."""
    nan = float("nan")
    set_limits = {k: float(v) for k, v in limits.budget.limits().items() if k != "max_wall_clock_s"}
    share = limits.warn_at
    at = {k: float(share) * v for k, v in set_limits.items() if share is not None and v > 0}
    return _WINDOW_PACK.pack(
        *(set_limits.get(n, nan) for n in WINDOW_LIMITS),
        *(at.get(n, nan) for n in WINDOW_LIMITS),
        share is not None,
        refresh,
        nan if end is None or limits.window.ttl_s is not None else end,
        _constant_ttl(limits.window, end, grace_s),
        limits.window.rolling,
    )


def _constant_ttl(window: Window, end: float | None, grace_s: int) -> int:
    """``ScopeRef.ttl_s`` but for the time left: a rolling window's length, ``grace_s`` after a
    fixed window's end, ``IDLE_TTL_S`` after the last use of a scope without a window."""
    if window.ttl_s is not None:
        return window.ttl_s
    return windows.IDLE_TTL_S if end is None else grace_s


def scope_key(kind: str, name: str, label: str) -> str:
    return f"{kind}:{name}:{label}"


def resolve(members: Sequence[tuple[str, str | None]], tables: ScopeTables | None) -> tuple[Scope, ...]:
    """The scopes among ``members`` ((kind, name) pairs) that have a budget, in reservation order.
    A budget without a limit is kept too: its window counts the scope's spend for ``spend()``
    (``[tenants.default]`` with a window alone tracks every tenant) and refuses nothing."""
    found: list[Scope] = []
    for kind, name in members:
        if not name:
            continue
        limits = REGISTRY.find(kind, name, tables)
        if limits is not None:
            found.append(Scope(kind, name, limits))
    return tuple(found)
