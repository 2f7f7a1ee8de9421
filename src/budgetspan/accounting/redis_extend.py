"""The Redis ledger's part in keeping budget for the answer and in extending a run's limits.

A run's reserve for the final answer is kept on its hash (``keep:NAME``); a call outside the
``final_response`` phase asks the reserve script to hold it to each limit less that reserve. An
extension raises the ``limit:NAME`` fields of the hash in one script, so every process sharing
the run is held to the new limits from its next reservation. (Another process's own copy of the
budget, and of the deadline it times calls out by, is not updated: it reads the hash's limits when
it reserves, and its local deadline stays the old one, which can only end a call early.)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_mirror import RunMirror


class ExtendOnRedis:
    """Mixed into ``RedisLedger``: the reserve flag of a reservation, and ``extend``."""

    _known: dict[str, RunMirror]
    _local: InMemoryLedger
    _local_runs: set[str]
    _lock: threading.Lock
    _errors: tuple[type[BaseException], ...]
    ttl_s: int

    def _call(
        self, script: str, run_id: str, args: Sequence[Any], tool: str | None = None, mirror: bool = True
    ) -> Any:
        raise NotImplementedError

    def _outage(self, run_id: str, error: BaseException) -> None:
        raise NotImplementedError

    def _short(self, run_id: str, final: bool) -> bool:
        """Whether a call is held to the limits less the reserve for the final answer."""
        known = self._known.get(run_id)
        return not final and known is not None and bool(known.budget.reserve_for_final)

    def extend(self, run_id: str, amounts: Mapping[str, float]) -> Budget:
        """Raise the run's limits on its hash: every process sharing the run sees them at its
        next reservation (this process's budget and deadline are updated at once)."""
        known = self._known.get(run_id)
        if known is None:
            raise KeyError(f"run {run_id!r} is not open in the ledger")
        with known.lock:
            known.budget = known.budget.extended(amounts)
            wall = amounts.get("max_wall_clock_s")
            if wall and known.wall_s is not None:
                known.wall_s += wall
        pairs = [x for name, amount in amounts.items() if amount for x in (name, amount)]
        if run_id not in self._local_runs:
            try:
                self._call("extend", run_id, [self.ttl_s, *pairs])
                return known.budget
            except self._errors as e:
                self._outage(run_id, e)
        if run_id in self._local_runs:
            self._local.extend(run_id, amounts)
        return known.budget
