"""The Redis ledger when Redis cannot be reached (``on_error``): account the run locally from
then on (``open``, and observe mode), or report it and try Redis again next time (``closed``);
and when another server answers (restarted, failed over): set the open runs back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from budgetspan import events
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import Mode
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_carry import CARRIER
from budgetspan.accounting.redis_mirror import RunMirror, mirrored_fields, usage_from
from budgetspan.accounting.rule import Held

log = logging.getLogger("budgetspan.accounting.redis_ledger")


class OutageOnRedis:
    """Mixed into ``RedisLedger``: what an operation Redis failed does next."""

    on_error: str
    _known: dict[str, RunMirror]
    _local: InMemoryLedger
    _local_runs: set[str]
    _lock: threading.Lock
    _errors: tuple[type[BaseException], ...]
    # (RedisLedger's own; declared here, not defined: a mixin's stub would hide the real one)
    _open_on_redis: Callable[[str, RunMirror, int, float], bool]
    _within: Callable[[RunMirror | None], float]

    def _mode(self, run_id: str) -> Mode:
        known = self._known.get(run_id)
        return Mode.ENFORCE if known is None else known.mode

    def _outage(self, run_id: str, error: BaseException) -> None:
        """Redis failed an operation of the run: ``open`` mode (and observe mode) accounts the run
        locally from now on; ``closed`` mode reports it and tries Redis again next time."""
        if self.on_error == "open" or self._mode(run_id) is Mode.OBSERVE:
            self._go_local(run_id, error)
        else:
            self._report(run_id, error, "budgetspan: Redis ledger unreachable for run %s (%s: %s)")

    def _report(self, run_id: str, error: BaseException, message: str) -> None:
        if CARRIER in run_id:  # a carry's own record: its calls stay noted for the next try, and
            return  # the outage was reported for the run that made them (a new record each try)
        known = self._known.get(run_id)
        if known is None or "unreachable" not in known.logged:
            if known is not None:
                known.logged.add("unreachable")
            log.warning(message, run_id, type(error).__name__, error)
        events.emit("on_internal_error", "redis_ledger")

    def _go_local(self, run_id: str, error: BaseException) -> None:
        with self._lock:
            if run_id in self._local_runs:
                return
            known = self._known.get(run_id)
            if known is None:
                known = RunMirror(Budget(), Mode.ENFORCE, time.monotonic())
            self._local.open(run_id, known.budget, known.mode, started_at=known.started_monotonic)
            if known.seen:  # (its figures, and the worst cases held, as Redis last told this process)
                with known.lock:
                    fields = mirrored_fields(known)
                held = (
                    float(fields.get(f"held:{name}", 0))
                    for name in ("cost_usd", "input_tokens", "output_tokens")
                )
                cost, held_in, held_out = held
                self._local.carry(run_id, usage_from(fields), Held(cost, int(held_in), int(held_out)))
            self._local_runs.add(run_id)
        self._report(
            run_id,
            error,
            "budgetspan: Redis ledger unreachable for run %s (%s: %s); this process accounts the run "
            "locally from now on, from what it last knew of it (its scope windows counted here from "
            "zero meanwhile; its calls are added to them on Redis once Redis answers again)",
        )

    def _restore(self, run_id: str, known: RunMirror, within: float) -> None:
        """The run's hash is gone while the run is open here: made again from what this process
        knew. Not a loss where the run's open never reached Redis (reported then)."""
        if known.started_at is not None:
            self._lost(run_id, known)
        self._open_on_redis(run_id, known, 0, within)

    def _lost(self, run_id: str, known: RunMirror) -> None:
        """The run's hash was gone while the run is open here: an internal error, logged once."""
        if "lost" not in known.logged:
            known.logged.add("lost")
            log.warning(
                "budgetspan: run %s was missing from the Redis ledger (Redis restarted, the key "
                "expired or was deleted); restored from what this process last knew. Scope windows "
                "(tenant, user, conversation, workflow budgets) lost with it start again from zero: "
                "run that Redis with persistence",
                run_id,
            )
        events.emit("on_internal_error", "redis_ledger")

    def _server_changed(self, before: bytes, after: bytes) -> None:
        """Another Redis answers (``redis_wire``: its ``run_id`` changed): restarted, or a replica
        promoted. Its copy of a run may be gone or older than what this process last heard (a
        snapshot taken before the last calls, replication lag): a run's count would start again
        below what was spent. Each run open here on Redis is set back to at least what this
        process knew, before the script that noticed is sent. Never raises."""
        with self._lock:
            runs = [  # (not a run whose open has not reached Redis: being opened, or failed then)
                (rid, known)
                for rid, known in self._known.items()
                if rid not in self._local_runs and known.started_at is not None
            ]
        for run_id, known in runs:
            try:
                made = self._open_on_redis(run_id, known, 0, self._within(known))
            except self._errors as e:  # (the call that noticed meets the same failure)
                self._report(run_id, e, "budgetspan: Redis ledger unreachable for run %s (%s: %s)")
                continue
            if made:
                self._lost(run_id, known)
                continue
            if "rolled back" not in known.logged:
                known.logged.add("rolled back")
                log.warning(
                    "budgetspan: Redis restarted or failed over while run %s was open (server "
                    "run_id %s, was %s): its record there may be older than what this process "
                    "knew, and was set back to at least that. Scope windows (tenant, user, "
                    "conversation, workflow budgets) may have lost what was written after the "
                    "server's last save (nothing with appendonly yes) and are not restored",
                    run_id,
                    after.decode(errors="replace"),
                    before.decode(errors="replace"),
                )
            events.emit("on_internal_error", "redis_ledger")
