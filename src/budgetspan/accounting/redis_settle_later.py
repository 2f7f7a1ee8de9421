"""The Redis ledger's settlements: sent at once, or later in the next reservation's round trip
(``redis_pending`` says when and why that is safe)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from budgetspan import events
from budgetspan.accounting import redis_scopes
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Refusal, Reservation
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_mirror import refusal_from
from budgetspan.accounting.redis_pending import RETRY_S, Pending, PendingSettlements
from budgetspan.accounting.redis_wire import may_have_run

log = logging.getLogger("budgetspan.accounting.redis_ledger")


class SettleLaterOnRedis:
    """Mixed into ``RedisLedger``: settle scripts, and the settlements pending in this process."""

    _pending: PendingSettlements
    _local: InMemoryLedger
    _local_runs: set[str]
    _errors: tuple[type[BaseException], ...]

    # (RedisLedger's own; declared here, not defined: a mixin's stub would hide the real one)
    _call: Callable[..., Any]
    _outage: Callable[[str, BaseException], None]
    open: Callable[..., None]
    close: Callable[[str], Any]
    reserve: Callable[..., Reservation]

    def _reserve_call(self, run_id: str, args: Sequence[Any], tool: str | None, scopes: Sequence[Any]) -> Any:
        """The reserve script's reply; with this process's pending settlement of the run ahead of
        it in the same round trip (``SETTLE_RESERVE``) when it has the same scope windows.

        Measured (bench/README.md, "One round trip per call"): a reserve + commit cycle in one
        round trip instead of two, 962k -> 818k instructions per cycle (client and server)."""
        pending = self._pending.take(run_id)
        if pending is not None and not pending.fits(scopes):  # other windows: settled on its own
            self._send_pending(run_id, pending)
            pending = None
        if pending is None:
            return self._call("reserve", run_id, args, tool, scopes=scopes)
        try:
            both = (pending.args[0] + args[0], *pending.args[1:], args[1])  # (numbers packed in one)
            reply = self._call("settle_reserve", run_id, both, tool, scopes=scopes)
        except BaseException as e:
            if may_have_run(e):  # never twice: the worst case may stay held (more seen, not less)
                _unsure(run_id, e)
            else:
                self._pending.put_back(run_id, pending)
            raise
        settled, reply = reply.split(b" ", 1)
        redis_scopes.warn(settled, pending.reservation.scopes)
        return reply

    def _settle(
        self, run_id: str, args: Sequence[Any], tool: str | None, scopes: Sequence[Any]
    ) -> Refusal | None:
        """One settle script (``settle_args``); returns the spend limit now used up. A run that has
        closed (a stream read after its block) still settles in its scope windows, which outlive it."""
        try:
            reply = self._call("settle", run_id, args, tool, scopes=scopes)
        except KeyError:
            if not scopes:
                raise
            with self._after_close(run_id, Mode.ENFORCE) as holder:
                reply = self._call("settle", holder, args, tool, scopes=scopes)
        status, reason, limit, _ = reply.split(b" ", 3)
        redis_scopes.warn(status, scopes)
        return refusal_from(reason, limit, None)

    def _send_pending(self, run_id: str, pending: Pending, background: bool = False) -> bool:
        """A pending settlement on its own round trip. If Redis fails it: the flushing thread
        keeps it for later (the worst case stays held); otherwise as ``commit`` would have.
        False: Redis failed it."""
        res = pending.reservation
        failed = False
        if run_id not in self._local_runs:
            try:
                self._settle(run_id, pending.args, res.tool, res.scopes)
                return True
            except KeyError:  # the run is closed: nothing to settle
                return True
            except self._errors as e:
                if background and may_have_run(e):  # never twice (``_unsure``)
                    _unsure(run_id, e)
                    return False
                if background:
                    self._pending.put_back(run_id, pending, RETRY_S)
                    return False
                self._outage(run_id, e)
                failed = True
        res.done = False  # the local ledger marks it done itself
        finished, unreported, unpriced = pending.options
        self._local.commit(res, pending.spend, finished=finished, unreported=unreported, unpriced=unpriced)
        return not failed

    def flush(self, run_id: str | None = None) -> None:
        """Send the settlements still pending in this process (of ``run_id``; None: of every run)."""
        if run_id is None:  # (at exit, before ``spend()``: one wait for a Redis that fails, not one per run)
            left = 0
            for rid, each in self._pending.take_all().items():
                if left or not self._send_pending(rid, each):
                    if left:
                        self._pending.put_back(rid, each, RETRY_S)
                    left += 1
            if left > 1:
                log.warning(
                    "budgetspan: Redis failed a settlement; %d more not sent now (kept for later; a "
                    "process that exits leaves their worst cases held on Redis)",
                    left - 1,
                )
            return
        pending = self._pending.take(run_id)
        if pending is not None:
            self._send_pending(run_id, pending)

    def reserve_in_scopes(
        self,
        run_id: str,
        kind: CallKind,
        scopes: Sequence[Any],
        worst: tuple[float | None, int | None, int | None],
        *,
        tool: str | None = None,
        enforce: bool = True,
    ) -> Reservation | None:
        """A call of a run that has closed, reserved in its scope windows only (``Ledger``)."""
        cost, output, input_ = worst
        with self._after_close(run_id, Mode.ENFORCE if enforce else Mode.OBSERVE) as holder:
            try:
                return self.reserve(
                    holder,
                    kind,
                    tool=tool,
                    worst_case_cost=cost,
                    worst_case_tokens=output,
                    worst_case_input_tokens=input_,
                    scopes=scopes,
                )
            except LedgerRefused:
                raise
            except Exception:  # (a closed run's late call: never worse than before, no window)
                events.internal_error("redis_ledger.reserve_in_scopes")
                return None

    @contextmanager
    def _after_close(self, run_id: str, mode: Mode) -> Iterator[str]:
        """A record for a closed run's late call (work that outlived its block), open while the
        call reserves or settles: no limits of its own, so only the run's scope windows count
        and refuse the call; closed again at once (the hash goes with its last opener). One
        record per mode: the first opener's mode is the hash's, and an observe-mode call must not
        be refused (nor an enforced one let through) in a record another call opened."""
        holder = run_id.split(AFTER_CLOSE, 1)[0] + AFTER_CLOSE + _MODE_SUFFIX[mode]
        self.open(holder, Budget(), mode)
        try:
            yield holder
        finally:
            self.close(holder)


def _unsure(run_id: str, error: BaseException) -> None:
    """A settlement sent to Redis whose reply never came (a timeout, a connection lost): it may
    have run, so it is not sent again (twice, it would give back another call's worst case too).
    If it did not run, its worst case stays held until the run ends: peers see more spend than
    there is, never less."""
    log.warning(
        "budgetspan: a settlement of run %s got no reply from Redis (%s: %s) and may have run: not "
        "sent again; if it did not run, the call's worst case stays held on Redis",
        run_id,
        type(error).__name__,
        error,
    )
    events.emit("on_internal_error", "redis_ledger")


#: The suffix of a closed run's record for its late calls (``_after_close``).
AFTER_CLOSE = "\x1fafter-close"
_MODE_SUFFIX = {Mode.ENFORCE: "", Mode.OBSERVE: "-observe"}
