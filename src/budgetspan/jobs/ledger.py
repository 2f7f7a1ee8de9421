"""The worker's ledger: the shared Redis ledger, plus a journal of the reservations each attempt of
a job holds, so that a retry takes over what a dead attempt left behind instead of paying twice.

Why: a worker that dies in the middle of a model call leaves that call's reservation on Redis (its
count and its worst-case tokens and dollars) and never settles it. The task is delivered again;
the retry makes the call again. Without a journal the run would be charged twice for that one
call, and a budget sized for the job would stop it early. With it, every reservation an attempt
makes is recorded under the job (``:calls``, one field per reservation, removed when it settles);
a new attempt gives back the reservations of earlier attempts (un-counts them and releases their
worst cases) before its first call: each call is counted once, by the attempt that completes it.
What the provider may have billed for the lost response is not known to anyone and is not counted.

Calls that completed in an earlier attempt stay counted (they did happen); finished steps saved
with ``jobs.checkpoint`` are not redone, so they are neither sent nor charged again.
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from budgetspan.accounting.budget import Usage
from budgetspan.accounting.ledger import CallKind, Refusal, Reservation, Spend
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.jobs.store import JobStore

# An attempt has opened the job's run: count it in the job hash (KEYS[1]). The attempts counted
# before and still open are dead (one attempt runs at a time): take their openers off the run's
# ledger hash (KEYS[2]) so that the hash goes when the live attempt closes the run.
_OPENED = """
local dead = redis.call('HINCRBY', KEYS[1], 'open_attempts', 1) - 1
if dead > 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'opened', -dead) end
  redis.call('HSET', KEYS[1], 'open_attempts', 1)
end
return dead
"""


class JobLedger(RedisLedger):
    """A ``RedisLedger`` that journals the reservations of the job attempts running here."""

    def __init__(self, client: Any, store: JobStore | None = None, **options: Any) -> None:
        super().__init__(client, **options)
        self.store = store or JobStore(client)
        self._attempts: dict[str, int] = {}  # job id -> this process's attempt
        self._fields: dict[int, tuple[str, str]] = {}  # id(reservation) -> (job id, journal field)
        self._seq = itertools.count()
        self._journal_lock = threading.Lock()
        self._opened = client.register_script(_OPENED)

    # attempts -----------------------------------------------------------------------------------
    def attach(self, job_id: str, attempt: int) -> int:
        """Journal the reservations of ``job_id`` made here as ``attempt``; give back those of
        earlier attempts (dead: a job runs one attempt at a time), and their openers of the run.
        Call it once the run is open. Returns how many reservations were given back."""
        with self._journal_lock:
            self._attempts[job_id] = attempt
        self._opened(keys=[self.store.key(job_id), self.key(job_id)])
        return self._give_back(job_id, keep=attempt)

    def _give_back(self, job_id: str, keep: int | None) -> int:
        """Release the journaled reservations of every attempt but ``keep``; how many."""
        key = self.store.key(job_id, "calls")
        taken = 0
        for name, raw in self.client.hgetall(key).items():
            field = name.decode() if isinstance(name, bytes) else str(name)
            if field.split(":", 1)[0] == str(keep):
                continue
            held = json.loads(raw)
            orphan = Reservation(
                job_id,
                CallKind(held["kind"]),
                held.get("tool"),
                float(held.get("cost", 0.0)),
                worst_case_input_tokens=int(held.get("in", 0)),
                worst_case_output_tokens=int(held.get("out", 0)),
            )
            if self.client.hdel(key, field):  # one taker per orphan
                super().release(orphan)
                taken += 1
        return taken

    def abandon(self, job_id: str) -> Usage:
        """The job's attempt was killed and no attempt follows (Celery's hard time limit): its
        calls in flight were sent and stay counted (their usage unknown), the journal goes, its
        opener comes off the run (the record goes with the last); the run's usage, or an empty
        one when its record is gone."""
        self.client.delete(self.store.key(job_id, "calls"))
        dead = int(self.client.hget(self.store.key(job_id), "open_attempts") or 0)
        self.client.hset(self.store.key(job_id), "open_attempts", 0)
        usage = Usage()
        for _ in range(dead):
            try:
                usage = self._read(job_id, close=True)
            except KeyError:
                break
        return usage

    def detach(self, job_id: str) -> None:
        """The attempt has closed the job's run."""
        with self._journal_lock:
            self._attempts.pop(job_id, None)
        try:
            self.client.hincrby(self.store.key(job_id), "open_attempts", -1)
        except self._errors:
            pass

    # the journal --------------------------------------------------------------------------------
    def _journal(self, res: Reservation) -> None:
        with self._journal_lock:
            attempt = self._attempts.get(res.run_id)
        if attempt is None or res.fallback:
            return
        field = f"{attempt}:{next(self._seq)}"
        held = {
            "kind": res.kind.value,
            "tool": res.tool,
            "cost": res.worst_case_cost,
            "in": res.worst_case_input_tokens,
            "out": res.worst_case_output_tokens,
        }
        key = self.store.key(res.run_id, "calls")
        self.client.hset(key, field, json.dumps(held))
        self.client.expire(key, self.store.ttl_s)
        with self._journal_lock:
            self._fields[id(res)] = (res.run_id, field)

    def _unjournal(self, res: Reservation) -> None:
        with self._journal_lock:
            entry = self._fields.pop(id(res), None)
        if entry is not None:
            self.client.hdel(self.store.key(entry[0], "calls"), entry[1])

    def reserve(self, run_id: str, kind: CallKind, **options: Any) -> Reservation:
        res = super().reserve(run_id, kind, **options)
        try:
            self._journal(res)
        except self._errors:
            pass  # Redis failed after the reservation: the ledger's own outage handling applies
        return res

    def commit(self, reservation: Reservation, spend: Spend | None = None, **options: Any) -> Refusal | None:
        try:
            return super().commit(reservation, spend, **options)
        finally:
            self._forget(reservation)

    def release(self, reservation: Reservation) -> None:
        try:
            super().release(reservation)
        finally:
            self._forget(reservation)

    def _forget(self, reservation: Reservation) -> None:
        try:
            self._unjournal(reservation)
        except self._errors:
            pass


__all__ = ["JobLedger"]
