"""A ledger shared between processes through Redis: one budget for a run that spans workers.

Each run is one Redis hash. Reservations and commits are Lua scripts, so the check and the
increment are one atomic step on the server: the (N+1)-th call is refused even when N processes
race. Deadlines use the Redis server's clock, the one clock every process shares.

Use it with ``budgetspan.set_ledger(RedisLedger(redis.Redis(...)))`` in every process and a run id
that the processes agree on (``budgetspan.run(..., run_id=...)``).

When Redis cannot be reached (``on_error``):

- ``"open"`` (default): the user's program goes on. The run is accounted in a process-local
  ledger from that moment to its end, with the same budget, counting again from zero; the outage
  is logged once per run and reported as an internal error (``budgetspan_internal_errors_total``).
  Limits still hold per process; across processes they can be overshot during the outage.
- ``"closed"``: a call that cannot be reserved is refused with ``BudgetExhausted`` (reason
  ``ledger_unavailable``): nothing runs unaccounted (observe mode still refuses nothing: it falls
  back as in ``open``). Each later call tries Redis again.

Known limit: a reservation made on Redis before the outage and ended during it cannot settle there;
its worst-case cost stays in the run's in-flight total on Redis until the run's key expires.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from budgetspan import events
from budgetspan.accounting.budget import FLOAT_LIMIT_NAMES, Budget, Limit, ToolLimits, Usage
from budgetspan.accounting.ledger import (
    CallKind,
    Ledger,
    LedgerRefused,
    Mode,
    Refusal,
    Reservation,
    Spend,
)
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.rule import spend_refusal

log = logging.getLogger(__name__)
T = TypeVar("T")
ON_ERROR_MODES = ("open", "closed")

_PREFIX = "budgetspan:run:"
_SPEND_LIMITS = ("max_cost_usd", "max_input_tokens", "max_output_tokens", "max_total_tokens")

# KEYS[1] run hash. ARGV: kind, tool ('' = none), worst_cost, worst_tokens, force(0/1),
# tool_max_calls, tool_max_retries ('' = none; the budget's own tool limits are stored at open).
# Returns {status, reason, limit, tool}: status 1 granted, 0 refused, 2 granted but would refuse.
_RESERVE = """
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return {-1, '', '', ''} end
local kind, tool = ARGV[1], ARGV[2]
local worst_cost, worst_tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local force = ARGV[5] == '1'
local function num(f) local v = redis.call('HGET', h, f); if v then return tonumber(v) end; return nil end
local function used(f) return num(f) or 0 end
local function lim(f) return num('limit:' .. f) end
local refusal, limit_value = nil, nil
local function refuse(r, l) if not refusal then refusal, limit_value = r, l end end
if redis.call('HGET', h, 'cancelled') == '1' then refuse('cancelled', '') end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local wall = lim('max_wall_clock_s')
if wall and now >= used('started_at') + wall then refuse('max_wall_clock_s', wall) end
local tool_calls_limit = lim('tool:' .. tool .. ':max_calls') or tonumber(ARGV[6])
local tool_retries_limit = lim('tool:' .. tool .. ':max_retries') or tonumber(ARGV[7])
local function spent_check(extra_cost, extra_tokens)
  local c = lim('max_cost_usd')
  if c and (used('cost_usd') >= c or (extra_cost > 0 and used('cost_usd') + extra_cost > c)) then refuse('max_cost_usd', c) end
  local i = lim('max_input_tokens')
  if i and used('input_tokens') >= i then refuse('max_input_tokens', i) end
  local o = lim('max_output_tokens')
  if o and (used('output_tokens') >= o or (extra_tokens > 0 and used('output_tokens') + extra_tokens > o)) then refuse('max_output_tokens', o) end
  local tt = lim('max_total_tokens')
  if tt and used('input_tokens') + used('output_tokens') >= tt then refuse('max_total_tokens', tt) end
end
if kind == 'retry' then
  local r = lim('max_retries')
  if r and used('retries') >= r then refuse('max_retries', r) end
  if tool ~= '' and tool_retries_limit and used('tool:' .. tool .. ':retries') >= tool_retries_limit then refuse('tool.max_retries', tool_retries_limit) end
else
  local s = lim('max_steps')
  if s and used('model_calls') + used('tool_calls') >= s then refuse('max_steps', s) end
  if kind == 'model' then
    local m = lim('max_model_calls')
    if m and used('model_calls') >= m then refuse('max_model_calls', m) end
    local extra = 0
    if worst_cost > 0 then extra = worst_cost + used('inflight_worst_cost') end
    spent_check(extra, worst_tokens)
  else
    local tc = lim('max_tool_calls')
    if tc and used('tool_calls') >= tc then refuse('max_tool_calls', tc) end
    if tool ~= '' and tool_calls_limit and used('tool:' .. tool .. ':calls') >= tool_calls_limit then refuse('tool.max_calls', tool_calls_limit) end
    spent_check(0, 0)
  end
end
local mode = redis.call('HGET', h, 'mode')
if refusal and not force and (mode == 'enforce' or refusal == 'cancelled') then
  return {0, refusal, tostring(limit_value), tool}
end
if kind == 'model' then redis.call('HINCRBY', h, 'model_calls', 1)
elseif kind == 'tool' then
  redis.call('HINCRBY', h, 'tool_calls', 1)
  if tool ~= '' then redis.call('HINCRBY', h, 'tool:' .. tool .. ':calls', 1) end
else
  redis.call('HINCRBY', h, 'retries', 1)
  if tool ~= '' then redis.call('HINCRBY', h, 'tool:' .. tool .. ':retries', 1) end
end
if worst_cost > 0 then redis.call('HINCRBYFLOAT', h, 'inflight_worst_cost', worst_cost) end
if refusal then return {2, refusal, tostring(limit_value), tool} end
return {1, '', '', ''}
"""

_COUNTERS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


class RedisLedger(Ledger):
    """Ledger on a Redis server (``redis.Redis`` client, any thread). Keys expire after ``ttl_s``."""

    def __init__(self, client: Any, ttl_s: int = 86_400, on_error: str = "open") -> None:
        if on_error not in ON_ERROR_MODES:
            raise ValueError(
                f"RedisLedger(on_error={on_error!r}): expected one of {', '.join(ON_ERROR_MODES)}"
            )
        self.r = client
        self.ttl_s = ttl_s
        self.on_error = on_error
        self._reserve = client.register_script(_RESERVE)
        try:
            from redis.exceptions import RedisError

            self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        except ImportError:  # a client from another package: its errors are OSErrors at least
            self._errors = (OSError,)
        self._local = InMemoryLedger()  # runs accounted here since Redis failed them
        self._local_runs: set[str] = set()
        self._opened: dict[str, tuple[Budget, Mode, float]] = {}  # what a local fallback needs
        self._lock = threading.Lock()

    # --- outage handling ----------------------------------------------------------------------
    def _guarded(self, run_id: str, on_redis: Callable[[], T], on_local: Callable[[], T]) -> T:
        """``on_redis()``; when Redis fails, ``on_local()``. In ``open`` mode the run then stays
        local to its end; in ``closed`` mode only this operation is local (the next reservation
        tries Redis again, and is refused if Redis is still away)."""
        if run_id in self._local_runs:
            return on_local()
        try:
            return on_redis()
        except self._errors as e:
            if self.on_error == "open" or self._mode(run_id) is Mode.OBSERVE:
                self._go_local(run_id, e)
            else:
                self._report(run_id, e)
            return on_local()

    def _mode(self, run_id: str) -> Mode:
        opened = self._opened.get(run_id)
        return opened[1] if opened is not None else Mode.ENFORCE

    def _report(self, run_id: str, error: BaseException) -> None:
        log.warning(
            "budgetspan: Redis ledger unreachable for run %s (%s: %s)", run_id, type(error).__name__, error
        )
        events.emit("on_internal_error", "redis_ledger")

    def _go_local(self, run_id: str, error: BaseException) -> None:
        with self._lock:
            if run_id in self._local_runs:
                return
            budget, mode, started = self._opened.get(run_id, (Budget(), Mode.ENFORCE, time.monotonic()))
            self._local.open(run_id, budget, mode, started_at=started)
            self._local_runs.add(run_id)
        log.warning(
            "budgetspan: Redis ledger unreachable for run %s (%s: %s); this process accounts the run "
            "locally from now on (counts restart from zero)",
            run_id,
            type(error).__name__,
            error,
        )
        events.emit("on_internal_error", "redis_ledger")

    @staticmethod
    def key(run_id: str) -> str:
        return _PREFIX + run_id

    def open(self, run_id: str, budget: Budget, mode: Mode, started_at: float | None = None) -> None:
        with self._lock:
            self._opened[run_id] = (budget, mode, time.monotonic() if started_at is None else started_at)
        self._guarded(
            run_id, lambda: self._open(run_id, budget, mode), lambda: self._local.open(run_id, budget, mode)
        )

    def _open(self, run_id: str, budget: Budget, mode: Mode) -> None:
        key = self.key(run_id)
        fields: dict[str, Any] = {"mode": mode.value, "started_at": self._server_now()}
        for name, value in budget.limits().items():
            fields["limit:" + name] = value
        for tool, tl in budget.tools.items():
            if tl.max_calls is not None:
                fields[f"limit:tool:{tool}:max_calls"] = tl.max_calls
            if tl.max_retries is not None:
                fields[f"limit:tool:{tool}:max_retries"] = tl.max_retries
        pipe = self.r.pipeline()
        for f, v in fields.items():
            pipe.hsetnx(key, f, v)  # the first process to open a shared run sets its budget
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def _server_now(self) -> float:
        sec, usec = self.r.time()
        return float(sec) + float(usec) / 1e6

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
    ) -> Reservation:
        # (worst_case_input_tokens: held by the local fallback only, until the script learns it)
        def local() -> Reservation:
            res = self._local.reserve(
                run_id,
                kind,
                tool=tool,
                worst_case_cost=worst_case_cost,
                worst_case_tokens=worst_case_tokens,
                worst_case_input_tokens=worst_case_input_tokens,
                force=force,
                tool_limits=tool_limits,
            )
            res.fallback = True
            return res

        if run_id in self._local_runs:
            return local()
        try:
            return self._reserve_on_redis(
                run_id, kind, tool, worst_case_cost, worst_case_tokens, force, tool_limits
            )
        except self._errors as e:
            # Closed: refuse, except where nothing may be refused (observe mode, forced records).
            if self.on_error == "closed" and not force and self._mode(run_id) is Mode.ENFORCE:
                self._report(run_id, e)
                raise LedgerRefused(Refusal(Limit.LEDGER_UNAVAILABLE.value, None)) from None
            self._go_local(run_id, e)
            return local()

    def _reserve_on_redis(
        self,
        run_id: str,
        kind: CallKind,
        tool: str | None,
        worst_case_cost: float | None,
        worst_case_tokens: int | None,
        force: bool,
        tool_limits: ToolLimits | None,
    ) -> Reservation:
        tl = tool_limits or ToolLimits()
        status, reason, limit, rtool = self._reserve(
            keys=[self.key(run_id)],
            args=[
                kind.value,
                tool or "",
                float(worst_case_cost or 0.0),
                int(worst_case_tokens or 0),
                "1" if force else "0",
                "" if tl.max_calls is None else tl.max_calls,
                "" if tl.max_retries is None else tl.max_retries,
            ],
        )
        status = int(status)
        if status == -1:
            raise KeyError(f"run {run_id!r} is not open in the ledger")
        refusal = None
        if status in (0, 2):
            r = reason.decode() if isinstance(reason, bytes) else str(reason)
            lv = limit.decode() if isinstance(limit, bytes) else str(limit)
            t = rtool.decode() if isinstance(rtool, bytes) else str(rtool)
            refusal = Refusal(r, float(lv) if lv not in ("", "None") else None, t or None)
        if status == 0:
            assert refusal is not None
            raise LedgerRefused(refusal)
        return Reservation(run_id, kind, tool, float(worst_case_cost or 0.0), refusal)

    def _add(
        self,
        run_id: str,
        spend: Spend | None,
        reservation: Reservation | None = None,
        finished: bool = False,
        unreported: bool = False,
        unpriced: bool = False,
    ) -> Refusal | None:
        key = self.key(run_id)
        pipe = self.r.pipeline()
        if spend is not None:
            for f in _COUNTERS:
                v = getattr(spend, f)
                if v:
                    pipe.hincrby(key, f, max(0, int(v)))
            if spend.cost_usd:
                pipe.hincrbyfloat(key, "cost_usd", max(0.0, spend.cost_usd))
        if reservation is not None:
            if reservation.worst_case_cost:
                pipe.hincrbyfloat(key, "inflight_worst_cost", -reservation.worst_case_cost)
            if reservation.kind is CallKind.TOOL and finished:
                pipe.hincrby(key, "tools_finished", 1)
        if unreported:
            pipe.hincrby(key, "unreported_usage_calls", 1)
        if unpriced:
            pipe.hincrby(key, "unpriced_calls", 1)
        pipe.execute()
        try:  # committed: a failure past this point must not make the caller commit again
            return self._spent_refusal(run_id)
        except self._errors:
            return None

    def _spent_refusal(self, run_id: str) -> Refusal | None:
        h = self._hash(run_id)
        if not h:
            return None
        # The same check as the in-memory ledger's, on the limits this run was opened with.
        limits: dict[str, Any] = {
            name: (float(h[key]) if name in FLOAT_LIMIT_NAMES else int(float(h[key])))
            for name in _SPEND_LIMITS
            if (key := "limit:" + name) in h
        }
        return spend_refusal(Budget().merged(**limits), self._usage_from(h))

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

        def on_redis() -> Refusal | None:
            reservation.done = True
            return self._add(run_id, spend, reservation, finished, unreported, unpriced)

        def on_local() -> Refusal | None:
            reservation.done = False  # the local ledger marks it done itself
            return self._local.commit(
                reservation, spend, finished=finished, unreported=unreported, unpriced=unpriced
            )

        return self._guarded(run_id, on_redis, on_local)

    def add_spend(self, run_id: str, spend: Spend) -> Refusal | None:
        return self._guarded(
            run_id, lambda: self._add(run_id, spend), lambda: self._local.add_spend(run_id, spend)
        )

    def release(self, reservation: Reservation) -> None:
        if reservation.done:
            return

        def on_local() -> None:
            if reservation.fallback:
                self._local.release(reservation)
            else:  # made on Redis, which cannot be reached: nothing to undo in this process
                reservation.done = True

        self._guarded(reservation.run_id, lambda: self._release(reservation), on_local)

    def _release(self, reservation: Reservation) -> None:
        key = self.key(reservation.run_id)
        pipe = self.r.pipeline()
        field = {"model": "model_calls", "tool": "tool_calls", "retry": "retries"}[reservation.kind.value]
        pipe.hincrby(key, field, -1)
        if reservation.tool is not None and reservation.kind is not CallKind.MODEL:
            suffix = "calls" if reservation.kind is CallKind.TOOL else "retries"
            pipe.hincrby(key, f"tool:{reservation.tool}:{suffix}", -1)
        if reservation.worst_case_cost:
            pipe.hincrbyfloat(key, "inflight_worst_cost", -reservation.worst_case_cost)
        pipe.execute()
        reservation.done = True

    def _hash(self, run_id: str) -> dict[str, str]:
        raw = self.r.hgetall(self.key(run_id))
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }

    def _usage_from(self, h: dict[str, str]) -> Usage:
        def i(f: str) -> int:
            return int(float(h.get(f, 0)))

        u = Usage(
            model_calls=i("model_calls"),
            tool_calls=i("tool_calls"),
            retries=i("retries"),
            input_tokens=i("input_tokens"),
            output_tokens=i("output_tokens"),
            cache_read_tokens=i("cache_read_tokens"),
            cache_write_tokens=i("cache_write_tokens"),
            reasoning_tokens=i("reasoning_tokens"),
            cost_usd=float(h.get("cost_usd", 0.0)),
            unpriced_calls=i("unpriced_calls"),
            unreported_usage_calls=i("unreported_usage_calls"),
            tools_finished=i("tools_finished"),
        )
        for k, v in h.items():
            if k.startswith("tool:"):  # tool:{name}:calls | tool:{name}:retries
                name, what = k[len("tool:") : k.rfind(":")], k[k.rfind(":") + 1 :]
                (u.tool_calls_by_name if what == "calls" else u.tool_retries_by_name)[name] = int(v)
        if "started_at" in h:
            u.wall_clock_s = max(0.0, self._server_now() - float(h["started_at"]))
        return u

    def usage(self, run_id: str) -> Usage:
        return self._guarded(run_id, lambda: self._usage(run_id), lambda: self._local.usage(run_id))

    def _usage(self, run_id: str) -> Usage:
        h = self._hash(run_id)
        if not h:
            raise KeyError(f"run {run_id!r} is not open in the ledger")
        return self._usage_from(h)

    def check(self, run_id: str) -> Refusal | None:
        return self._guarded(run_id, lambda: self._check(run_id), lambda: self._local.check(run_id))

    def _check(self, run_id: str) -> Refusal | None:
        h = self._hash(run_id)
        if not h:
            return None
        if h.get("cancelled") == "1":
            return Refusal(Limit.CANCELLED.value, None)
        wall = h.get("limit:max_wall_clock_s")
        if wall is not None and self._server_now() >= float(h["started_at"]) + float(wall):
            return Refusal(Limit.WALL_CLOCK_S.value, float(wall))
        return self._spent_refusal(run_id)

    def cancel(self, run_id: str) -> bool:
        return self._guarded(run_id, lambda: self._cancel(run_id), lambda: self._local.cancel(run_id))

    def _cancel(self, run_id: str) -> bool:
        key = self.key(run_id)
        if not self.r.exists(key):
            return False
        self.r.hset(key, "cancelled", "1")
        return True

    def close(self, run_id: str) -> Usage:
        """Final usage. The hash lingers a minute so that calls still in flight elsewhere can commit."""
        try:
            return self._guarded(run_id, lambda: self._close(run_id), lambda: self._local.close(run_id))
        finally:
            with self._lock:
                self._opened.pop(run_id, None)
                self._local_runs.discard(run_id)

    def _close(self, run_id: str) -> Usage:
        h = self._hash(run_id)
        if not h:
            return Usage()
        self.r.expire(self.key(run_id), 60)
        return self._usage_from(h)

    def deadline(self, run_id: str) -> float | None:
        return self._guarded(run_id, lambda: self._deadline(run_id), lambda: self._local.deadline(run_id))

    def _deadline(self, run_id: str) -> float | None:
        h = self._hash(run_id)
        wall = h.get("limit:max_wall_clock_s")
        if wall is None or "started_at" not in h:
            return None
        remaining = float(h["started_at"]) + float(wall) - self._server_now()
        return time.monotonic() + remaining


__all__ = ["RedisLedger"]
