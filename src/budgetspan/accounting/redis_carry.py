"""The calls a run accounted in this process while Redis could not be reached (``on_error="open"``,
observe mode: ``redis_outage``), carried to their scope windows on Redis once it answers again.

Without this, a tenant's, user's or conversation's window on Redis (what ``spend()`` and every
other process see) never counted what a run spent during an outage: the window's limit held for
everyone else as if those calls had not been made. Each call is carried once, when Redis answers
again: at a run's open or end, at ``spend()`` and at exit, for ``timeout_s`` at most each time (two
round trips a call), one carry at a time. It is carried as a forced call of a record
of its own (no limits, observe mode: never refused, since it was already made) that holds its
spend as its worst case until the settlement adds it: if Redis fails between the two, the window
holds the spend (peers see it, as held) rather than losing it. A call that Redis failed after
reserving it on Redis is not carried: it is counted there already, its worst case held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from budgetspan import events
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Mode, Reservation, Spend
from budgetspan.accounting.redis_pending import afresh_in_forked_child
from budgetspan.accounting.redis_wire import Server

log = logging.getLogger("budgetspan.accounting.redis_ledger")

#: How many calls waiting to be carried a process keeps (then the oldest are dropped, said once).
CARRY_MAX = 100_000
#: The suffix of the record a carry opens on Redis (a run id never holds this character).
CARRIER = "\x1fcarried-"


@dataclass(slots=True, frozen=True)
class Carried:
    """One call (``kind`` None: spend added after the fact) accounted in this process."""

    kind: CallKind | None
    tool: str | None
    spend: Spend | None
    flags: tuple[bool, bool, bool]  # finished, unreported, unpriced
    scopes: tuple[Any, ...]


class CarryToRedis:
    """Mixed into ``RedisLedger``: note the locally accounted calls that have scope windows, and
    carry them to Redis (``carry_back``)."""

    _tickets: Iterator[int]
    _server: Server
    _local_runs: set[str]
    # (RedisLedger's own; declared here, not defined: a mixin's stub would hide the real one)
    open: Callable[..., None]
    close: Callable[..., Any]
    reserve: Callable[..., Reservation]
    commit: Callable[..., Any]
    release: Callable[[Reservation], None]
    add_spend: Callable[..., Any]

    def _init_carry(self) -> None:
        """Also in a child forked with this ledger: its parent carries what was noted before the
        fork (both would count it), and the lock may have been held by a thread that is not there."""
        self._to_carry: deque[Carried] = deque()
        self._carry_lock = threading.Lock()
        self._carrying = threading.Lock()  # one carry at a time: in order, and never nested
        self._carrier_thread: int | None = None
        self._dropped = 0

    def _forget_at_fork(self) -> None:
        afresh_in_forked_child(self, CarryToRedis._init_carry)

    def _note_local(self, run_id: str, carried: Carried) -> None:
        """A call of ``run_id`` settled in this process: to be carried (if it has windows)."""
        if not carried.scopes or CARRIER in run_id:
            return
        with self._carry_lock:
            if len(self._to_carry) >= CARRY_MAX:
                self._to_carry.popleft()
                self._dropped += 1
                if self._dropped == 1:
                    log.warning(
                        "budgetspan: more than %d calls made while Redis could not be reached wait "
                        "to be counted in their scope windows on Redis; the oldest are dropped",
                        CARRY_MAX,
                    )
            self._to_carry.append(carried)

    def has_to_carry(self) -> bool:
        return bool(self._to_carry)

    def carry_at_exit(self) -> None:
        """The last carry (one slice: exit is not held longer); what is left is said, not lost silently."""
        self.carry_back()
        if self._to_carry:
            log.warning(
                "budgetspan: calls made while Redis could not be reached were not all added to their "
                "scope windows on Redis before exit (Redis failed, or %.1f s did not suffice)",
                self._server.timeout_s,
            )

    def carry_back(self, answers: Callable[[], object] | None = None) -> None:
        """Carry the calls noted so far to their windows on Redis, in order, for ``timeout_s`` at
        most (two round trips a call: a long outage's calls would hold the caller for minutes); those
        left, or that Redis fails, stay for the next try. ``answers``: first ask Redis this (it
        raises if Redis does not answer: ``spend()`` during an outage waits once, for its read).
        Never raises but from ``answers``."""
        if not self._to_carry:  # (the common case, read without the lock: a deque's length is atomic)
            return
        if answers is not None:
            answers()
        if self._carrier_thread == threading.get_ident():
            return  # the carry's own record opened or closed: ``open``/``close`` call us again
        # Another thread carrying: leave it to that one (each run opened would wait a slice in
        # turn), but for ``spend()``, which waits to read what it carries.
        if not self._carrying.acquire(blocking=answers is not None):
            return
        try:
            self._carrier_thread = threading.get_ident()
            self._carry_noted()
        finally:
            self._carrier_thread = None
            self._carrying.release()

    def _carry_noted(self) -> None:
        with self._carry_lock:
            if not self._to_carry:
                return
            taken = list(self._to_carry)
            self._to_carry.clear()
        try:
            left = self._carry(taken, time.monotonic() + self._server.timeout_s)
        except Exception:
            events.internal_error("redis_ledger.carry_back")
            return
        if left:
            with self._carry_lock:
                self._to_carry.extendleft(reversed(left))

    def _carry(self, taken: Sequence[Carried], until: float) -> list[Carried]:
        """Carry ``taken`` in order; the ones not carried (Redis failed, or ``until`` passed) are
        returned."""
        with self._carrier() as holder:
            for i, call in enumerate(taken):
                if i and time.monotonic() >= until:
                    return list(taken[i:])
                if call.kind is None:
                    if not self._carry_spend(holder, call):
                        return list(taken[i:])
                    continue
                reservation = self.reserve(
                    holder,
                    call.kind,
                    tool=call.tool,
                    force=True,
                    scopes=call.scopes,
                    **_spend_as_worst(call.spend),
                )
                if reservation.fallback:  # Redis failed it: made in this process, undone
                    self.release(reservation)
                    return list(taken[i:])
                finished, unreported, unpriced = call.flags
                self.commit(
                    reservation, call.spend, finished=finished, unreported=unreported, unpriced=unpriced
                )
        return []

    def _carry_spend(self, holder: str, call: Carried) -> bool:
        """Spend added after the fact; False if Redis failed it (the record went local)."""
        assert call.spend is not None
        self.add_spend(holder, call.spend, call.scopes)
        return holder not in self._local_runs

    @contextmanager
    def _carrier(self) -> Iterator[str]:
        """A record of its own on Redis for one carry, closed (and gone) after it."""
        holder = f"{CARRIER}{next(self._tickets)}"
        self.open(holder, Budget(), Mode.OBSERVE)
        try:
            yield holder
        finally:
            self.close(holder)


def _spend_as_worst(spend: Spend | None) -> dict[str, Any]:
    """The call's spend as the worst case its carrying reservation holds until it settles."""
    if spend is None:
        return {}
    return {
        "worst_case_cost": spend.cost_usd,
        "worst_case_tokens": spend.output_tokens,
        "worst_case_input_tokens": spend.input_tokens,
    }
