"""A ledger shared between processes through Redis: one budget for a run that spans workers.

Each run is one Redis hash. Every operation is one Lua script, so one round trip, and the check
and the change it makes are one atomic step on the server: the (N+1)-th call is refused even when
N processes race. The reserve script is the transcription of ``accounting/rule.py``;
``tests/accounting`` runs one table of cases through both. Deadlines use the Redis server's clock.

Use: ``budgetspan.set_ledger(RedisLedger(redis.Redis(...)))`` in every process, one run id for all.

**One round trip per call** (``redis_pending``): in enforce mode a call's settlement goes with the
process's next reservation of the run, in one script; until then its worst case stays held.

**A live run is never forgotten.** Each process that opens a run adds one to the hash's open count
and takes it off at close (the hash goes at zero); its reservations keep its expiry ``ttl_s`` away
(each process refreshes it at most every ``ttl_s``/10: the hash outlives its last use by 90% of
``ttl_s`` at least).
Each process mirrors what the scripts last told it of its open runs: a hash found gone (Redis
restarted empty, expiry, a peer's delete) is recreated from the budget and the mirror (the worst
cases held stand in for spend that may have settled meanwhile), counted as an internal error (logged
once per run) and the operation retried, in ``on_error="closed"`` mode too (refusing every later
call would stop a run that can go on within its budget). Peers' spend unseen here is not restored.

**Scopes above the run** (``redis_scopes``): a call's scope windows are more keys of the same
scripts (one round trip). **Bounded** (``redis_wire``): every wait ends by ``timeout_s`` and the
run's deadline. **Clamped** (``redis_mirror``): absurd figures are clamped, never an outage.

When Redis cannot be reached (``on_error``):

- ``"open"`` (default): the user's program goes on. The run is accounted in a process-local
  ledger from that moment to its end, with the same budget, going on from what Redis last told
  this process (its windows' calls carried to Redis once it answers: ``redis_carry``); the outage
  is logged once per run, an internal error (``budgetspan_internal_errors_total``). Limits still
  hold per process; across processes they can be overshot by peers' calls this process had not heard of.
- ``"closed"``: a call that cannot be reserved is refused (reason ``ledger_unavailable``): nothing
  runs unaccounted (observe mode refuses nothing: as ``open``). Each later call tries Redis again.

Known limit: a reservation made on Redis before an outage and ended during it stays held there.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from budgetspan import events
from budgetspan.accounting import redis_scopes, windows
from budgetspan.accounting.budget import Budget, Limit, ToolLimits, Usage
from budgetspan.accounting.ledger import CallKind, Ledger, LedgerRefused, Mode, Refusal, Reservation, Spend
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_carry import Carried, CarryToRedis
from budgetspan.accounting.redis_extend import ExtendOnRedis
from budgetspan.accounting.redis_mirror import (
    RunMirror,
    boot_clock,
    budget_fields,
    clamp_dollars,
    clamp_tokens,
    clock_from,
    hash_fields,
    mirrored_fields,
    refusal_from,
    usage_from,
    usage_of,
    with_worst,
)
from budgetspan.accounting.redis_outage import OutageOnRedis
from budgetspan.accounting.redis_pending import (
    CHECK_ARGS,
    DEFAULT_SETTLE_LAG_S,
    Pending,
    PendingSettlements,
    reached,
    reserve_args,
    settle_args,
)
from budgetspan.accounting.redis_settle_later import SettleLaterOnRedis
from budgetspan.accounting.redis_wire import SCRIPTS, Server

log = logging.getLogger(__name__)
ON_ERROR_MODES = ("open", "closed")

DEFAULT_TIMEOUT_S = 2.0
#: The least a call waits for Redis near or past the run's deadline.
MIN_WAIT_S = 0.1

_PREFIX = "budgetspan:run:"
#: A reservation refreshes the run's expiry when this process last did it (or opened the run) this
#: share of ``ttl_s`` ago or more: an EXPIRE per call cost the server 6% more (bench/README.md).
REFRESH_AFTER = 0.1
_now = time.monotonic  # (the clock of those refreshes: a test moves it)


class RedisLedger(SettleLaterOnRedis, OutageOnRedis, CarryToRedis, ExtendOnRedis, Ledger):
    """Ledger on a Redis server (a ``redis.Redis`` client; any thread). See the module's docstring.

    ``timeout_s``: the longest any call waits for Redis. ``ttl_s``: how long a run's hash outlives
    its last use (a process that dies without closing its runs leaves them to expire).
    ``settle_lag_s``: how long a call's settlement may wait to ride on the next reservation
    (``redis_pending``; 0: each commit is its own round trip).
    """

    def __init__(
        self,
        client: Any,
        ttl_s: int = 86_400,
        on_error: str = "open",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        settle_lag_s: float = DEFAULT_SETTLE_LAG_S,
    ) -> None:
        if on_error not in ON_ERROR_MODES:
            raise ValueError(
                f"RedisLedger(on_error={on_error!r}): expected one of {', '.join(ON_ERROR_MODES)}"
            )
        import redis

        self.client = client
        self.ttl_s = ttl_s
        self.on_error = on_error
        self._server = Server(client, timeout_s)
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._known: dict[str, RunMirror] = {}  # the runs this process has open
        self._tickets = itertools.count()
        self._local = InMemoryLedger()  # runs accounted here since Redis failed them
        self._local_runs: set[str] = set()
        self._lock = threading.Lock()
        self._pending = PendingSettlements(self._send_pending, settle_lag_s)
        self._server.on_change = self._server_changed  # (redis_outage)
        self._init_carry()
        self._forget_at_fork()
        _flush_at_process_end(self)

    @staticmethod
    def key(run_id: str) -> str:
        return _PREFIX + run_id

    # --- one script on Redis ----------------------------------------------------------------
    def _within(self, known: RunMirror | None) -> float:
        """How long this call may wait for Redis: ``timeout_s``, and no longer than the run has
        left (but ``MIN_WAIT_S`` at least, for the server's refusal at the deadline)."""
        if known is None or known.wall_s is None:
            return self._server.timeout_s
        left = known.started_monotonic + known.wall_s - time.monotonic()
        return self._server.timeout_s if left >= self._server.timeout_s else max(left, MIN_WAIT_S)

    def _call(
        self,
        script: str,
        run_id: str,
        args: Sequence[Any],
        tool: str | None = None,
        mirror: bool = True,
        scopes: Sequence[Any] = (),
    ) -> Any:
        """Run ``script`` on the run's hash (and ``scopes``' windows) and remember what it says. A run
        open here whose hash is gone is restored and the script run again; unknown: KeyError."""
        known = self._known.get(run_id)
        within = self._within(known)
        ticket = next(self._tickets)
        reply = redis_scopes.run(self._server, SCRIPTS[script], self.key(run_id), args, within, scopes)
        if reply == -1:
            if known is None:
                raise KeyError(f"run {run_id!r} is not open in the ledger")
            self._restore(run_id, known, within)
            ticket = next(self._tickets)
            reply = redis_scopes.run(self._server, SCRIPTS[script], self.key(run_id), args, within, scopes)
            if reply == -1:  # deleted again at once: give up on this one call
                raise KeyError(f"run {run_id!r} is not open in the ledger")
        if known is not None and mirror:  # (SETTLE_RESERVE's reply has one status more)
            text = reply.split(b" ", 4)[4] if script == "settle_reserve" else reply.split(b" ", 3)[3]
            known.remember(ticket, script, text, tool)
        return reply

    def _open_on_redis(self, run_id: str, known: RunMirror, openers: int, within: float) -> bool:
        """Open the run (``openers`` 1) or restore it (0) on Redis from the budget and the mirror;
        whether its hash was made."""
        with known.lock:
            fields = budget_fields(known.budget, known.mode)
            if known.started_at is not None:
                fields["started_at"] = known.started_at
            fields.update(mirrored_fields(known))
            fields["opened"] = max(int(fields.get("opened", 0)), known.opens)
            seen_before = bool(known.seen)
            ticket = next(self._tickets)
        pairs = [item for pair in fields.items() for item in pair]
        sent = boot_clock()
        reply = self._server.run(SCRIPTS["open"], self.key(run_id), [self.ttl_s, openers, *pairs], within)
        now, got = time.monotonic(), boot_clock()
        created, started_at, wall, sec, usec, text, keep = reply
        if created == 1 and seen_before and openers:
            self._lost(run_id, known)
        with known.lock:
            known.started_at = started_at
            known.wall_s = None if wall is None else float(wall)
            server_now = int(sec) + int(usec) / 1e6
            known.started_monotonic = now - (server_now - float(started_at))
            known.clock_from = clock_from(sent, got, server_now, float(started_at), known.wall_s)
            known.clock_from_short = known.clock_from - (float(keep) if keep else 0.0)
            known.refreshed = _now()
        known.remember(ticket, "open", text)
        return bool(created == 1)

    # --- the Ledger interface -------------------------------------------------------------------
    def open(self, run_id: str, budget: Budget, mode: Mode, started_at: float | None = None) -> None:
        with self._lock:
            known = self._known.get(run_id)
            if known is None:
                start = time.monotonic() if started_at is None else started_at
                known = self._known[run_id] = RunMirror(budget, mode, start)
            known.opens += 1
        if run_id in self._local_runs:
            return
        try:
            self._open_on_redis(run_id, known, 1, self._within(known))
        except self._errors as e:
            self._outage(run_id, e)
            return
        self.carry_back()  # (Redis answers: what the process accounted without it goes there)

    def reserve(
        self,
        run_id: str,
        kind: CallKind,
        *,
        tool: str | None = None,
        worst_case_cost: float | None = None,
        worst_case_tokens: int | None = None,
        worst_case_input_tokens: int | None = None,
        force: bool = False,
        tool_limits: ToolLimits | None = None,
        final: bool = False,
        scopes: Sequence[Any] = (),
    ) -> Reservation:
        if kind is CallKind.MODEL:  # only model calls spend tokens and dollars
            cost, held_in = clamp_dollars(worst_case_cost), clamp_tokens(worst_case_input_tokens)
            held_out = clamp_tokens(worst_case_tokens)
        else:
            cost, held_in, held_out = 0.0, 0, 0
        if run_id not in self._local_runs:
            try:
                return self._reserve_on_redis(
                    run_id, kind, tool, (cost, held_in, held_out), force, tool_limits, final, scopes
                )
            except self._errors as e:
                # Closed: refuse, except where nothing may be refused (observe mode, forced records).
                if self.on_error == "closed" and not force and self._mode(run_id) is Mode.ENFORCE:
                    self._report(run_id, e, "budgetspan: Redis ledger unreachable for run %s (%s: %s)")
                    raise LedgerRefused(Refusal(Limit.LEDGER_UNAVAILABLE.value, None)) from None
                self._go_local(run_id, e)
        res = self._local.reserve(
            run_id,
            kind,
            tool=tool,
            worst_case_cost=cost,
            worst_case_tokens=held_out,
            worst_case_input_tokens=held_in,
            force=force,
            tool_limits=tool_limits,
            final=final,
            scopes=scopes,
        )
        res.fallback = True
        return res

    def _reserve_on_redis(
        self,
        run_id: str,
        kind: CallKind,
        tool: str | None,
        worst: tuple[float, int, int],
        force: bool,
        tool_limits: ToolLimits | None,
        final: bool = False,
        scopes: Sequence[Any] = (),
    ) -> Reservation:
        cost, held_in, held_out = worst
        known, now = self._known.get(run_id), _now()
        refresh = known is None or now - known.refreshed >= self.ttl_s * REFRESH_AFTER
        short = self._short(run_id, final)
        clock = known is None or boot_clock() >= (known.clock_from_short if short else known.clock_from)
        flags, at = (force, short, clock), windows.now() if scopes else 0.0
        args = reserve_args(kind, worst, flags, self.ttl_s if refresh else 0, tool_limits, tool, at)
        status, reason, limit, _ = self._reserve_call(run_id, args, tool, scopes).split(b" ", 3)
        if refresh and known is not None:  # (refreshed by the script, granted or refused)
            known.refreshed = now
        found = with_worst(redis_scopes.refusal_in(reason, limit, tool, scopes), worst, known)
        redis_scopes.warn(status, scopes)
        if scopes:  # (granted or refused: the script refreshed them either way)
            redis_scopes.note_refreshed(self._server, scopes)
        if status[:1] == b"0":
            assert found is not None
            raise LedgerRefused(found)
        return Reservation(
            run_id,
            kind,
            tool,
            cost,
            found,
            worst_case_input_tokens=held_in,
            worst_case_output_tokens=held_out,
            scopes=redis_scopes.bound(status, scopes),
        )

    def commit(
        self,
        reservation: Reservation,
        spend: Spend | None = None,
        *,
        finished: bool = True,
        unreported: bool = False,
        unpriced: bool = False,
    ) -> Refusal | None:
        if reservation.done:
            return None
        run_id = reservation.run_id
        if not reservation.fallback and run_id not in self._local_runs:
            reservation.done = True
            flags = (unreported, unpriced, finished and reservation.kind is CallKind.TOOL)
            args = settle_args(reservation, spend, flags, False)
            if self._pending.lag_s > 0 and self._mode(run_id) is Mode.ENFORCE:
                pending = Pending(args, reservation, spend, (finished, unreported, unpriced))
                older = self._pending.put(run_id, pending)
                if older is not None:
                    self._send_pending(run_id, older)
                known = self._known.get(run_id)
                return None if known is None else reached(known, spend)
            try:
                return self._settle(run_id, args, reservation.tool, reservation.scopes)
            except KeyError:  # the run is closed (or was never open here): nothing to settle
                return None
            except self._errors as e:
                self._outage(run_id, e)
            reservation.done = False  # the local ledger marks it done itself
        elif reservation.fallback:
            flags = (finished, unreported, unpriced)
            self._note_local(
                run_id, Carried(reservation.kind, reservation.tool, spend, flags, reservation.scopes)
            )
        return self._local.commit(
            reservation, spend, finished=finished, unreported=unreported, unpriced=unpriced
        )

    def add_spend(self, run_id: str, spend: Spend, scopes: Sequence[Any] = ()) -> Refusal | None:
        if run_id not in self._local_runs:
            try:
                return self._settle(
                    run_id, settle_args(None, spend, (False,) * 3, False, scopes), None, scopes
                )
            except KeyError:
                return None
            except self._errors as e:
                self._outage(run_id, e)
        self._note_local(run_id, Carried(None, None, spend, (False,) * 3, tuple(scopes)))
        return self._local.add_spend(run_id, spend, scopes)

    def release(self, reservation: Reservation) -> None:
        if reservation.done:
            return
        if reservation.fallback:
            self._local.release(reservation)
            return
        reservation.done = True
        if reservation.run_id in self._local_runs:
            return  # made on Redis, which cannot be reached: nothing to undo in this process
        try:
            args = settle_args(reservation, None, (False,) * 3, True)
            self._settle(reservation.run_id, args, reservation.tool, reservation.scopes)
        except KeyError:
            pass
        except self._errors as e:
            self._outage(reservation.run_id, e)

    def usage(self, run_id: str) -> Usage:
        self.flush(run_id)
        if run_id not in self._local_runs:
            try:
                return self._read(run_id, close=False)
            except self._errors as e:
                self._outage(run_id, e)
                known = self._known.get(run_id)
                if run_id not in self._local_runs and known is not None:
                    return usage_of(known)  # closed mode: what this process last knew
        return self._local.usage(run_id)

    def _read(self, run_id: str, close: bool) -> Usage:
        """The run's usage from its hash (and, ``close``, one opener less)."""
        if close:  # a lost run is not restored just to be closed
            reply = self._server.run(
                SCRIPTS["read"], self.key(run_id), ["1"], self._within(self._known.get(run_id))
            )
            if reply == -1:
                raise KeyError(run_id)
        else:
            reply = self._call("read", run_id, ["0"], mirror=False)
        _, sec, usec, flat = reply
        fields = hash_fields(flat)
        u = usage_from(fields)
        if "started_at" in fields:
            u.wall_clock_s = max(0.0, int(sec) + int(usec) / 1e6 - float(fields["started_at"]))
        return u

    def check(self, run_id: str) -> Refusal | None:
        self.flush(run_id)
        if run_id not in self._local_runs:
            try:
                reply = self._call("reserve", run_id, CHECK_ARGS)
                _, reason, limit, _ = reply.split(b" ", 3)
                return refusal_from(reason, limit, None)
            except KeyError:
                return None
            except self._errors as e:
                self._outage(run_id, e)
        return self._local.check(run_id)

    def cancel(self, run_id: str) -> bool:
        if run_id not in self._local_runs:
            try:
                self._call("cancel", run_id, [self.ttl_s])
                return True
            except KeyError:
                return False
            except self._errors as e:
                self._outage(run_id, e)
        return self._local.cancel(run_id)

    def close(self, run_id: str) -> Usage:
        """Final usage; one opener less on Redis (the hash goes with the last one)."""
        self.flush(run_id)
        with self._lock:
            known = self._known.get(run_id)
            if known is None:
                return Usage()
            known.opens -= 1
            last = known.opens <= 0
            if last:
                del self._known[run_id]
                local = run_id in self._local_runs
                self._local_runs.discard(run_id)
            else:
                local = run_id in self._local_runs
        if local:
            return self._local.close(run_id) if last else self._local.usage(run_id)
        try:
            used = self._read(run_id, close=True)
        except KeyError:
            self._lost(run_id, known)
            return usage_of(known)
        except self._errors as e:
            self._report(run_id, e, "budgetspan: Redis ledger unreachable for run %s (%s: %s)")
            return usage_of(known)
        self.carry_back()  # (Redis answers: what the process accounted without it goes there)
        return used

    def scope_usage(self, key: str) -> Usage | None:
        self.flush()  # this process's settlements; then its calls made while Redis failed (if it answers)
        self.carry_back(lambda: redis_scopes.usage(self._server, key, self._server.timeout_s))
        return redis_scopes.usage(self._server, key, self._server.timeout_s)

    def deadline(self, run_id: str) -> float | None:
        if run_id in self._local_runs:
            return self._local.deadline(run_id)
        known = self._known.get(run_id)
        return None if known is None else known.deadline


__all__ = ["DEFAULT_TIMEOUT_S", "RedisLedger"]


def _flush_at_process_end(ledger: RedisLedger) -> None:
    """Flush at interpreter exit, and at the end of a ``multiprocessing`` child (fork, forkserver:
    it ends with ``os._exit``, so no ``atexit``; its finalizers run), also in each child forked
    with this ledger (a child's finalizers are cleared when it starts)."""
    import multiprocessing
    import multiprocessing.util as mp_util

    ref = weakref.ref(ledger)
    atexit.register(_flush_at_exit, ref)
    if multiprocessing.parent_process() is not None:
        mp_util.Finalize(None, _flush_at_exit, args=(ref,), exitpriority=0)
    mp_util.register_after_fork(
        ledger,
        lambda forked: mp_util.Finalize(None, _flush_at_exit, args=(weakref.ref(forked),), exitpriority=0),
    )


def _flush_at_exit(ledger: weakref.ref[RedisLedger]) -> None:
    """At interpreter exit: a process that ends without closing its runs still records what it
    spent (``flush``; a killed one cannot, and its worst case stays held). Never raises."""
    still = ledger()
    if still is not None:
        try:
            still.flush()
            still.carry_at_exit()
        except Exception:
            events.internal_error("redis_ledger")
