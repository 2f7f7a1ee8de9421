"""Settle later, in the next reservation's round trip: one round trip per model call on Redis.

A call's settlement (its actual usage, its worst case given back) is not sent when the call ends:
it rides on the same process's next reservation of the run (``SETTLE_RESERVE``: settle, then
reserve, one script). It is sent on its own when the run closes, before this process reads the
run's or a scope's spend (``usage``, ``check``, ``budgetspan.spend``), when the next call of the
run has other scope windows, when a second call of the run ends first, and at the latest
``settle_lag_s`` after the call ended (a background thread).

**Conservative by construction.** Until it is settled, the call's worst case stays held on Redis:
peers see more spend than there is, never less, so no limit is overshot by the lag; this process's
next call is settled before it is reserved, so it sees its own spend exactly. A process that dies
with a settlement pending leaves that worst case held (as a call in flight would), and the actual
spend unrecorded. Only enforce mode waits: observe mode wants each commit's answer at once.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from budgetspan import events
from budgetspan.accounting import rule
from budgetspan.accounting.budget import NO_TOOL_LIMITS, ToolLimits, Usage
from budgetspan.accounting.ledger import CallKind, Refusal, Reservation, Spend
from budgetspan.accounting.redis_mirror import RunMirror, clamp_dollars, clamp_tokens
from budgetspan.accounting.redis_scripts import MIRROR

#: How long a settlement waits for the next reservation of its run, at most (seconds).
DEFAULT_SETTLE_LAG_S = 0.05
#: How long the flushing thread waits idle before it ends (a new settlement starts it again).
_IDLE_S = 10.0
#: For how long after a settlement the thread looks again every ``lag_s`` by itself instead of
#: waiting idle to be woken: woken by each commit, it mostly found the settlement already taken
#: by the next reservation (a notify and a thread switch per call; bench/README.md, 2026-12-06).
_BUSY_S = 1.0
#: When the flushing thread could not reach Redis: how long until it tries again.
RETRY_S = 1.0
_NO_SPEND = Spend()


@dataclass
class Pending:
    """One settlement not sent yet: the settle script's arguments, and the commit it stands for
    (replayed in the local ledger if the run goes local meanwhile: ``on_error="open"``)."""

    args: tuple[Any, ...]
    reservation: Reservation
    spend: Spend | None
    #: ``commit``'s finished, unreported, unpriced.
    options: tuple[bool, bool, bool]
    #: When the flushing thread sends it (``time.monotonic``).
    due: float = 0.0

    def fits(self, scopes: Sequence[Any]) -> bool:
        """Whether it can ride on a reservation in ``scopes`` (the same windows: the same keys)."""
        mine = self.reservation.scopes
        if not mine or len(mine) != len(scopes):
            return not mine and not scopes
        if mine == tuple(scopes):  # (mostly the same objects: compared by identity first)
            return True
        return [ref.key for ref in mine] == [ref.key for ref in scopes]


#: A settlement's figures as the settle script takes them, in one argument (``redis_hot_lua``):
#: the worst case to give back, what was spent, the flags, and the kind to un-count (``KIND_CODES``).
SETTLE_NUMBERS = struct.Struct("<13d")
#: A call's kind as the scripts take it, one number among the packed ones (0: none).
KIND_CODES = {CallKind.MODEL: 1, CallKind.TOOL: 2, CallKind.RETRY: 3}
NAN = float("nan")
#: A reservation's figures as the reserve script takes them, in one argument (``redis_hot_lua``):
#: the kind (``KIND_CODES``; 4: check), the worst cost, input and output tokens, force (1), the
#: limits less the reserve for the final answer (1), whether to compare the server's clock with
#: the run's deadline (1; ``redis_mirror.clock_from``), the ttl to refresh (0: not now), the
#: tool's own max_calls and max_retries (NaN: none; the budget's entry wins), the scope clock
#: (``windows.now``: a fixed window's expiry is reckoned from it; 0 without windows).
RESERVE_NUMBERS = struct.Struct("<11d")
#: ``Ledger.check``'s arguments: what refuses the run now, changing nothing.
CHECK_ARGS = (RESERVE_NUMBERS.pack(4, 0, 0, 0, 0, 0, 1, 0, NAN, NAN, 0), "")


def reserve_args(
    kind: CallKind,
    worst: tuple[float, int, int],
    flags: tuple[bool, bool, bool],
    ttl: int,
    tool_limits: ToolLimits | None,
    tool: str | None,
    now: float = 0.0,
) -> tuple[bytes, str]:
    """The reserve script's arguments: ``RESERVE_NUMBERS`` packed (``flags``: force, short,
    clock; ``now``: the scope clock), and the tool ('' none)."""
    tl = tool_limits or NO_TOOL_LIMITS
    numbers = RESERVE_NUMBERS.pack(
        KIND_CODES[kind],
        *worst,
        *flags,
        ttl,
        NAN if tl.max_calls is None else tl.max_calls,
        NAN if tl.max_retries is None else tl.max_retries,
        now,
    )
    return (numbers, tool or "")


def settle_args(
    r: Reservation | None,
    spend: Spend | None,
    flags: tuple[bool, bool, bool],
    uncount: bool,
    scopes: Sequence[Any] = (),
) -> tuple[bytes, str, bytes]:
    """The settle script's arguments: ``r``'s worst case to give back, ``spend`` to add, the flags
    (unreported, unpriced, tool finished) and the kind to un-count (``uncount``), packed; the tool;
    the records of its rolling windows it reserved in (``r``'s windows, else ``scopes``: births)."""
    sp = spend or _NO_SPEND
    numbers = SETTLE_NUMBERS.pack(
        0.0 if r is None else r.worst_case_cost,
        0 if r is None else r.worst_case_input_tokens,
        0 if r is None else r.worst_case_output_tokens,
        clamp_tokens(sp.input_tokens),
        clamp_tokens(sp.output_tokens),
        clamp_tokens(sp.cache_read_tokens),
        clamp_tokens(sp.cache_write_tokens),
        clamp_tokens(sp.reasoning_tokens),
        clamp_dollars(sp.cost_usd),
        *flags,
        KIND_CODES[r.kind] if uncount and r is not None else 0,
    )
    tool = "" if r is None or r.tool is None else r.tool
    return (numbers, tool, births(scopes if r is None else r.scopes))


def births(refs: Sequence[Any]) -> bytes:
    """The records of rolling windows a call reserved in, as the scripts take them
    ('2:1733400000.5,4:...': KEYS[i] and its birth; ``ScopeRef.born``)."""
    if not refs:
        return b""
    return ",".join(f"{i}:{ref.born!r}" for i, ref in enumerate(refs, 2) if ref.born is not None).encode()


#: The input and output tokens and the dollars among a mirror's packed figures (``FIGURES``).
_SPENT = struct.Struct(
    f"<{8 * MIRROR.index('input_tokens')}x2d"
    f"{8 * (MIRROR.index('cost_usd') - MIRROR.index('output_tokens') - 1)}xd"
)
assert MIRROR.index("output_tokens") == MIRROR.index("input_tokens") + 1


def reached(known: RunMirror, spend: Spend | None) -> Refusal | None:
    """The token or dollar limit a pending settlement uses up, as this process knows the run: its
    latest reply's figures plus ``spend`` (what the settle script would answer, but for peers'
    calls settled since that reply). Enforce mode refuses at the next reservation anyway."""
    b = known.budget
    if spend is None or not b.spend_limited:
        return None
    ticket, text = known.latest
    if ticket < 0:
        return None
    spent_in, spent_out, spent_cost = _SPENT.unpack_from(text)
    tokens_in = spent_in + clamp_tokens(spend.input_tokens)
    tokens_out = spent_out + clamp_tokens(spend.output_tokens)
    cost = spent_cost + clamp_dollars(spend.cost_usd)
    if (  # none used up (the common answer, without building a Usage)
        (b.max_cost_usd is None or cost < b.max_cost_usd)
        and (b.max_input_tokens is None or tokens_in < b.max_input_tokens)
        and (b.max_output_tokens is None or tokens_out < b.max_output_tokens)
        and (b.max_total_tokens is None or tokens_in + tokens_out < b.max_total_tokens)
    ):
        return None
    used = Usage(input_tokens=int(tokens_in), output_tokens=int(tokens_out), cost_usd=cost)
    return rule.spend_refusal(b, used)


T = TypeVar("T")


def afresh_in_forked_child(owner: T, fresh: Callable[[T], object]) -> None:
    """``fresh(owner)`` in every child forked while ``owner`` lives (held weakly): a child must
    not send or carry what its parent will, nor wait on a lock a parent's thread held at the fork."""
    ref = weakref.ref(owner)

    def in_child() -> None:
        still = ref()
        if still is not None:
            fresh(still)

    os.register_at_fork(after_in_child=in_child)


class PendingSettlements:
    """At most one pending settlement per run, and the thread that sends those that waited
    ``lag_s`` (``send(run_id, pending, True)``; it must not raise). A forked child starts afresh."""

    def __init__(self, send: Callable[[str, Pending, bool], object], lag_s: float) -> None:
        self.lag_s = lag_s
        self._send = send
        self._fresh()
        afresh_in_forked_child(self, PendingSettlements._fresh)

    def _fresh(self) -> None:
        """Nothing pending, no thread: at start, and in a forked child, which must neither send its
        parent's settlements nor wait on a lock the parent's thread held when it forked."""
        self._pending: dict[str, Pending] = {}
        # (put and take, on every call, hold the lock itself: a Condition's ``with`` is a Python call)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._running = False
        #: The thread waits with nothing pending (a new settlement must wake it).
        self._idle = False
        #: When the latest settlement was kept (``time.monotonic``).
        self._last_put = 0.0

    def put(self, run_id: str, pending: Pending) -> Pending | None:
        """Keep ``pending``; returns the run's older one, to send now."""
        now = time.monotonic()
        pending.due = now + self.lag_s
        with self._lock:
            self._last_put = now
            older = self._pending.get(run_id)
            self._pending[run_id] = pending
            self._wake()
        return older

    def _wake(self) -> None:
        """(Under the lock.) Start the thread, or wake it if it waits with nothing pending (a
        thread waiting for a due time wakes by then: no wake-up per call)."""
        if not self._running:
            self._running = True
            threading.Thread(target=self._run, name="budgetspan-redis-settle", daemon=True).start()
        elif self._idle:
            self._idle = False
            self._cond.notify()

    def take(self, run_id: str) -> Pending | None:
        with self._lock:
            return self._pending.pop(run_id, None)

    def put_back(self, run_id: str, pending: Pending, retry_s: float = 0.0) -> None:
        """A settlement whose round trip failed: kept (sent again ``retry_s`` from now, at the
        earliest, by the thread), unless a newer one took its place."""
        pending.due = max(pending.due, time.monotonic() + retry_s)
        with self._lock:
            self._pending.setdefault(run_id, pending)
            self._wake()

    def take_all(self) -> dict[str, Pending]:
        with self._lock:
            taken, self._pending = self._pending, {}
        return taken

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and self.lag_s > 0 and time.monotonic() - self._last_put < _BUSY_S:
                    # busy: look again in lag_s (a settlement kept meanwhile is due no earlier)
                    self._cond.wait(self.lag_s)
                    continue
                if not self._pending:
                    self._idle = True
                    woken = self._cond.wait(_IDLE_S)
                    self._idle = False
                    if not woken and not self._pending:
                        self._running = False
                        return
                    continue
                now = time.monotonic()
                due = [run_id for run_id, p in self._pending.items() if p.due <= now]
                if not due:
                    self._cond.wait(min(p.due for p in self._pending.values()) - now)
                    continue
                taken = [(run_id, self._pending.pop(run_id)) for run_id in due]
            for run_id, pending in taken:
                try:
                    self._send(run_id, pending, True)
                except Exception:  # the thread goes on: a settlement failed is logged, never raised
                    events.internal_error("redis_ledger")
