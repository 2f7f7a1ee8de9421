"""A job's state in Redis, readable by job id from any process, whatever queue carries the task.

Keys (``budgetspan:job:<id>``, all with a time to live):

- the job hash: ``state`` (``queued`` → ``running`` → ``ended``; ``cancelled`` when cancelled
  before it started), submission and start times (Redis's clock, the one every process shares),
  ``attempts``, ``cancel_requested``, and at the end ``outcome``, ``explanation``, ``partial``,
  ``result`` (JSON) and ``notified``;
- ``:progress``: a Redis stream of milestones, the last one of kind ``end``;
- ``:steps``: checkpointed step results, so a retried task does not redo (nor pay for) finished steps;
- ``:cancel``: a pub/sub channel where a cancel of a running job is published (``jobs.cancel_watch``);
- ``:calls``: the reservations an attempt holds in the ledger, so a retry can take over those of an
  attempt that died (``jobs.ledger``);
- ``:lease``: the live attempt's claim on the job (its owner token, expiring after ``lease_s`` unless
  renewed: ``jobs.lease``), from its start until its end is notified. A delivery that finds it held
  by another is a duplicate of a live attempt (the broker delivered the message again while the job
  runs or waits for its countdown): it waits, and counts itself in the job hash's ``duplicates``.

Every state change that another process may race (start, cancel, end) is one Lua script.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = "budgetspan:job:"
DEFAULT_TTL_S = 7 * 86_400

DEFAULT_LEASE_S = 10.0

# KEYS: the job hash, its lease. ARGV: the hash's time to live, the attempt's owner token ('' for
# none: no lease taken), the lease's time to live (ms). A lease held by another: 'busy', nothing
# changed (also when the job has ended: the holder has not notified it yet).
_BEGIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return {2, 'busy', '0', '0'} end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'cancelled' or state == 'ended' then return {0, state, '0', '0'} end
if not state then redis.call('HSET', KEYS[1], 'submitted_at', tostring(now)) end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if not redis.call('HGET', KEYS[1], 'started_at') then
  local wait = now - tonumber(redis.call('HGET', KEYS[1], 'submitted_at'))
  redis.call('HSET', KEYS[1], 'started_at', tostring(now), 'queue_wait_s', tostring(wait))
end
redis.call('HSET', KEYS[1], 'state', 'running')
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
return {1, 'running', tostring(n), redis.call('HGET', KEYS[1], 'queue_wait_s')}
"""

# The lease's holder renews it (ARGV[2]: ms), also taking it back when it expired (or went with a
# Redis restarted empty) and no other delivery took it; or gives it up (no ARGV[2]). Held by
# another: 0.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
if ARGV[2] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if not holder then return 0 end
return redis.call('DEL', KEYS[1])
"""

_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or not state then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancel_requested', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return state or 'unknown'
end
if state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('PUBLISH', KEYS[2], '1')
end
return state
"""

# A job keeps ledger records (KEYS[2..]) open until it ends: those of the declared runs it was
# submitted from, and its own between an attempt that failed and the queue's retry. One opener
# more on each that is still there, noted in the job hash (KEYS[1]).
_HOLD = """
local held = {}
local before = redis.call('HGET', KEYS[1], 'held_runs')
if before then held = cjson.decode(before) end
local n = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'opened', 1)
    held[#held + 1] = KEYS[i]
    n = n + 1
  end
end
if n > 0 then redis.call('HSET', KEYS[1], 'held_runs', cjson.encode(held)) end
return n
"""

# The first end also gives back the openers the job held (a record goes with its last opener).
_END = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'ended' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
local held = redis.call('HGET', KEYS[1], 'held_runs')
if held then
  for _, key in ipairs(cjson.decode(held)) do
    if redis.call('EXISTS', key) == 1 and redis.call('HINCRBY', key, 'opened', -1) <= 0 then
      redis.call('DEL', key)
    end
  end
  redis.call('HDEL', KEYS[1], 'held_runs')
end
return 1
"""


@dataclass(frozen=True)
class JobEnd:
    """What the notification says: delivered at least once, always with the same ``idempotency_key``."""

    job_id: str
    outcome: str  # success | failure | escalated | budget_exhausted | cancelled
    explanation: str
    partial: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    attempts: int = 0
    queue_wait_s: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)  # the run's, over every attempt

    @property
    def idempotency_key(self) -> str:
        return f"budgetspan-job-end:{self.job_id}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "idempotency_key": self.idempotency_key}


def _json(value: Any) -> str:
    return json.dumps(value, default=repr)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobStore:
    """The jobs' Redis keys, over a ``redis.Redis`` client (the ledger's Redis or another)."""

    def __init__(self, client: Any, ttl_s: int = DEFAULT_TTL_S, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self._lease = client.register_script(_LEASE)
        self._begin = client.register_script(_BEGIN)
        self._cancel = client.register_script(_CANCEL)
        self._end = client.register_script(_END)
        self._hold = client.register_script(_HOLD)

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        return PREFIX + job_id + (":" + part if part else "")

    # the submitter ---------------------------------------------------------------------------
    def submitted(
        self, job_id: str, workflow: str, hold: Sequence[str] = (), notify: str | None = None
    ) -> None:
        """Record the job as queued; ``hold``: the ledger keys of the runs it spends from, kept
        open until it ends (an ended parent run would take its spend with it)."""
        sec, usec = self.client.time()
        key = self.key(job_id)
        self.client.hset(
            key, mapping={"state": "queued", "workflow": workflow, "submitted_at": sec + usec / 1e6}
        )
        if notify:  # for an end recorded where the message's headers are not at hand
            self.client.hset(key, "notify", notify)
        self.client.expire(key, self.ttl_s)
        if hold:
            self.hold(job_id, hold)

    def hold(self, job_id: str, run_keys: Sequence[str]) -> int:
        """Keep the ledger records ``run_keys`` open (one opener more each) until the job ends."""
        return int(self._hold(keys=[self.key(job_id), *run_keys]))

    def request_cancel(self, job_id: str) -> str:
        """Mark the job cancelled; returns its state before (``queued``, ``running``, ``ended``...).
        A running job's attempt hears it on ``cancel_channel`` (and reads the flag)."""
        return _text(self._cancel(keys=[self.key(job_id), self.cancel_channel(job_id)], args=[self.ttl_s]))

    @classmethod
    def cancel_channel(cls, job_id: str) -> str:
        return cls.key(job_id, "cancel")

    # the worker ------------------------------------------------------------------------------
    def begin(self, job_id: str, owner: str = "") -> tuple[str, int, float | None]:
        """Start an attempt holding the job's lease as ``owner`` (none if ``""``): ``("go", attempt
        number, queue wait)``; ``("busy", 0, None)`` while another attempt holds the lease (the
        job is live: this delivery is a duplicate); ``("ended" | "cancelled", 0, None)``."""
        go, state, n, wait = self._begin(
            keys=[self.key(job_id), self.key(job_id, "lease")],
            args=[self.ttl_s, owner, max(1, int(self.lease_s * 1000))],
        )
        if int(go) == 1:
            return "go", int(n), float(wait)
        return _text(state), 0, None

    def renew_lease(self, job_id: str, owner: str) -> bool:
        """Extend ``owner``'s lease on the job by ``lease_s`` (taken back if free); False when
        another holds it."""
        ms = max(1, int(self.lease_s * 1000))
        return bool(self._lease(keys=[self.key(job_id, "lease")], args=[owner, ms]))

    def release_lease(self, job_id: str, owner: str) -> bool:
        """Give the lease up (only ``owner``'s): a later delivery of the job goes on at once."""
        return bool(self._lease(keys=[self.key(job_id, "lease")], args=[owner]))

    def note_duplicate(self, job_id: str) -> int:
        """Count a delivery that found the job live under another attempt's lease."""
        return int(self.client.hincrby(self.key(job_id), "duplicates", 1))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.hget(self.key(job_id), "cancel_requested") == b"1")

    def end(self, end: JobEnd, state: str = "ended") -> bool:
        """Record the end once (False if it was recorded already) and publish its milestone."""
        fields = {
            "outcome": end.outcome,
            "explanation": end.explanation,
            "partial": _json(end.partial),
            "result": _json(end.result),
            "usage": _json(end.usage),
        }
        pairs = [x for kv in fields.items() for x in kv]
        first = bool(self._end(keys=[self.key(end.job_id)], args=[self.ttl_s, state, *pairs]))
        if first:
            self.publish(end.job_id, {"kind": "end", "label": end.explanation, "outcome": end.outcome})
        return first

    def ended(self, job_id: str) -> JobEnd | None:
        """The recorded end of a job, or None while it has none."""
        raw = {_text(k): _text(v) for k, v in self.client.hgetall(self.key(job_id)).items()}
        if "outcome" not in raw:
            return None
        wait = raw.get("queue_wait_s")
        return JobEnd(
            job_id=job_id,
            outcome=raw["outcome"],
            explanation=raw.get("explanation", ""),
            partial=json.loads(raw.get("partial") or "{}"),
            result=json.loads(raw.get("result") or "null"),
            attempts=int(raw.get("attempts", 0)),
            queue_wait_s=float(wait) if wait else None,
            usage=json.loads(raw.get("usage") or "{}"),
        )

    def mark_notified(self, job_id: str) -> None:
        self.client.hset(self.key(job_id), "notified", "1")

    def notified(self, job_id: str) -> bool:
        return bool(self.client.hget(self.key(job_id), "notified") == b"1")

    def state(self, job_id: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self.key(job_id)).items()}

    # checkpoints -----------------------------------------------------------------------------
    def checkpoint(self, job_id: str, step: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """The step's saved result, or ``compute()`` saved now; True when it was saved before."""
        key = self.key(job_id, "steps")
        saved = self.client.hget(key, step)
        if saved is not None:
            return json.loads(saved), True
        value = compute()
        self.client.hset(key, step, json.dumps(value))
        self.client.expire(key, self.ttl_s)
        return value, False

    def steps(self, job_id: str) -> dict[str, Any]:
        raw = self.client.hgetall(self.key(job_id, "steps"))
        return {_text(k): json.loads(v) for k, v in raw.items()}

    # progress --------------------------------------------------------------------------------
    def publish(self, job_id: str, entry: dict[str, Any]) -> None:
        key = self.key(job_id, "progress")
        self.client.xadd(key, {k: "" if v is None else str(v) for k, v in entry.items()}, maxlen=10_000)
        self.client.expire(key, self.ttl_s)

    def watch(
        self, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0
    ) -> Iterator[dict[str, str]]:
        """The job's milestones from the first, as they come, until its end (or ``timeout_s``)."""
        key = self.key(job_id, "progress")
        last = "0"
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            block_ms = int(poll_s * 1000)
            if deadline is not None:
                block_ms = max(1, min(block_ms, int((deadline - time.monotonic()) * 1000)))
            for _, entries in self.client.xread({key: last}, block=block_ms) or []:
                for entry_id, raw in entries:
                    last = _text(entry_id)
                    entry = {_text(k): _text(v) for k, v in raw.items()}
                    yield entry
                    if entry.get("kind") == "end":
                        return


__all__ = ["DEFAULT_LEASE_S", "DEFAULT_TTL_S", "JobEnd", "JobStore"]
