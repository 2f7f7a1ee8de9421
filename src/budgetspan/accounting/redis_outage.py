"""The Redis ledger when Redis cannot be reached (``on_error``): account the run locally from
then on (``open``, and observe mode), or report it and try Redis again next time (``closed``)."""

from __future__ import annotations

import logging
import threading
import time

from budgetspan import events
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import Mode
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_mirror import RunMirror

log = logging.getLogger("budgetspan.accounting.redis_ledger")


class OutageOnRedis:
    """Mixed into ``RedisLedger``: what an operation Redis failed does next."""

    on_error: str
    _known: dict[str, RunMirror]
    _local: InMemoryLedger
    _local_runs: set[str]
    _lock: threading.Lock

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
            self._local_runs.add(run_id)
        self._report(
            run_id,
            error,
            "budgetspan: Redis ledger unreachable for run %s (%s: %s); this process accounts the run "
            "locally from now on (counts restart from zero)",
        )
