"""A ledger shared between processes through Redis: one budget for a run that spans workers.

Each run is one Redis hash. Every operation is one Lua script, so one round trip, and the check
and the change it makes are one atomic step on the server: the (N+1)-th call is refused even when
N processes race. The reserve script is the transcription of ``accounting/rule.py`` (count limits
by reservation; token and dollar limits refuse when used up or when what is spent, plus the worst
cases held by the calls in flight, plus this call's worst case would pass them); ``tests/accounting``
runs one table of cases through both. Deadlines use the Redis server's clock, the one clock every
process shares.

Use it with ``budgetspan.set_ledger(RedisLedger(redis.Redis(...)))`` in every process and a run id
that the processes agree on (``budgetspan.run(..., run_id=...)``).

**A live run is never forgotten.** Every process that opens a run adds one to the hash's open
count and takes one off when it closes; the hash is deleted when the count reaches zero, so workers
sharing a run id keep it alive for each other. Every reservation refreshes the key's time to live
(``ttl_s``), so a run longer than ``ttl_s`` does not expire while it is in use. Each process keeps
a mirror of what the scripts last told it about each run it has open. When a script finds the
run's hash gone (Redis restarted empty, the key expired, a peer deleted it) while the run is open
here, the hash is recreated from the budget it was opened with and the mirrored usage (including
the worst cases held by calls in flight: they stand in for the spend of calls that may have settled
while the hash was gone), the loss is counted as an internal error (logged once per run) and the
operation is retried. This is the same in ``on_error="closed"`` mode: Redis answers, the run is
accounted on it again, so nothing runs unaccounted (DESIGN: "a live run is never forgotten";
refusing every later call would stop a run that can go on within its budget). What peers spent
after this process last heard from Redis is not in the mirror: the first process to notice the loss
restores the run as it last knew it.

**Bounded.** Every call waits for Redis at most ``timeout_s`` (2 s by default), and no longer than
the run's remaining wall-clock time (at least 0.1 s, so that a call at the deadline still gets its
refusal from the server). The ledger talks to Redis through a connection pool of its own, made
with the client's settings, socket and connect timeouts of at most ``timeout_s`` and no retries
(redis-py's retries with back-off would multiply the bound), so that connecting and the connection
handshake are bounded too.

A call whose wait runs out drops its connection (a late reply must never be read as the answer
to the next command); its script may still run when the server wakes, which counts a call that
was not made (an overshoot of the count, never an undercount).

**Clamped.** Token figures are clamped to ``TOKEN_CAP`` (10**15) and dollars to ``COST_CAP`` (10**12)
before they are sent, and every sum on the server stays at or below the same caps: a provider
reporting absurd usage (``prompt_tokens = 10**30``) can neither overflow a counter nor make a
figure inexact, and is never taken for an outage. Beyond the caps the Redis ledger stops counting
where ``InMemoryLedger`` goes on.

When Redis cannot be reached (``on_error``):

- ``"open"`` (default): the user's program goes on. The run is accounted in a process-local
  ledger from that moment to its end, with the same budget, counting again from zero; the outage
  is logged once per run and reported as an internal error (``budgetspan_internal_errors_total``).
  Limits still hold per process; across processes they can be overshot during the outage.
- ``"closed"``: a call that cannot be reserved is refused with ``BudgetExhausted`` (reason
  ``ledger_unavailable``): nothing runs unaccounted (observe mode still refuses nothing: it falls
  back as in ``open``). Each later call tries Redis again.

Known limit: a reservation made on Redis before the outage and ended during it cannot settle there;
its worst case stays held on Redis until the run's key goes.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from budgetspan import events
from budgetspan.accounting.budget import (
    FLOAT_LIMIT_NAMES,
    NO_TOOL_LIMITS,
    Budget,
    Limit,
    ToolLimits,
    Usage,
)
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

log = logging.getLogger(__name__)
ON_ERROR_MODES = ("open", "closed")

DEFAULT_TIMEOUT_S = 2.0
#: The least a call waits for Redis near or past the run's deadline.
MIN_WAIT_S = 0.1
#: The largest token count (per figure and per sum) the ledger keeps: exact in a Lua number (a
#: double), and so is the sum of two (a total of input and output tokens).
TOKEN_CAP = 10**15
#: The largest dollar amount the ledger keeps.
COST_CAP = 1e12

_PREFIX = "budgetspan:run:"
_NO_SPEND = Spend()

#: The figures each script tells this process about the run it ran on (those it read or wrote),
#: kept as the process's mirror of the run; then come the calls and retries of the call's tool.
_MIRROR = (
    "model_calls",
    "tool_calls",
    "retries",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_calls",
    "unreported_usage_calls",
    "tools_finished",
    "held:cost_usd",
    "held:input_tokens",
    "held:output_tokens",
    "cancelled",
    "opened",
)
_SPEND_LIMITS = ("max_cost_usd", "max_input_tokens", "max_output_tokens", "max_total_tokens")
#: What the reserve script reads (and the tool's limits and counts when the call names a tool).
_RESERVE_READS = (
    "mode",
    "cancelled",
    "started_at",
    *(
        "limit:" + name
        for name in ("max_wall_clock_s", "max_retries", "max_steps", "max_model_calls", "max_tool_calls")
    ),
    *("limit:" + name for name in _SPEND_LIMITS),
    "model_calls",
    "tool_calls",
    "retries",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "held:cost_usd",
    "held:input_tokens",
    "held:output_tokens",
)
#: What the settle script reads (and the call's counts when it un-counts a call).
_SETTLE_READS = (
    "mode",
    *("limit:" + name for name in _SPEND_LIMITS),
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_calls",
    "unreported_usage_calls",
    "tools_finished",
    "held:cost_usd",
    "held:input_tokens",
    "held:output_tokens",
)


def _lua_list(names: Sequence[str]) -> str:
    return "{" + ", ".join(f"'{name}'" for name in names) + "}"


# The helpers every script shares. ``s`` holds the fields of the run's hash as one HMGET read them
# (false when absent) and as ``put`` changed them; ``write`` stores the changes with one HSET.
# Sums are made in Lua numbers (doubles), as InMemoryLedger makes them in Python floats, and kept
# as text with 17 significant digits, which reads back as the same double.
_PRELUDE = (
    f"""
local h = KEYS[1]
local MIRROR = {_lua_list(_MIRROR)}
local TOKEN_CAP, COST_CAP = {TOKEN_CAP}, {COST_CAP:.0f}
"""
    + """
local CAPS = {['cost_usd'] = COST_CAP, ['held:cost_usd'] = COST_CAP}
local s, changes = {}, {}

-- Read ``names`` and ``extra`` in one HMGET; false when the run's hash does not exist.
local function read(names, extra)
  for _, name in ipairs(extra) do names[#names + 1] = name end
  local got = redis.call('HMGET', h, unpack(names))
  for i, name in ipairs(names) do s[name] = got[i] end
  return s['mode'] ~= false
end

-- A figure (0 when absent), and a limit (its number and the text it was stored as; nil: none).
local function n(name) return tonumber(s[name]) or 0 end
local function lim(name)
  local raw = s['limit:' .. name]
  if raw then return tonumber(raw), raw end
  return nil, nil
end

local function put(name, value)
  local text = string.format('%.17g', value)
  changes[#changes + 1] = name
  changes[#changes + 1] = text
  s[name] = text
end
local function write() if #changes > 0 then redis.call('HSET', h, unpack(changes)) end end

-- Add ``amount`` to a figure, never past its cap; give back a worst case, never below zero.
local function add(name, amount)
  if amount > 0 then put(name, math.min(n(name) + amount, CAPS[name] or TOKEN_CAP)) end
end
local function give_back(name, amount)
  if amount > 0 then put(name, math.max(n(name) - amount, 0)) end
end

-- The figures a call of ``kind`` counts in: its total and, for a named tool, the tool's own.
local function counters(kind, tool)
  if kind == 'model' then return 'model_calls', nil end
  local total, what = 'retries', 'retries'
  if kind == 'tool' then total, what = 'tool_calls', 'calls' end
  if tool == '' then return total, nil end
  return total, 'tool:' .. tool .. ':' .. what
end

-- Count (step 1) or un-count (step -1) one call of ``kind``, as memory.py's _count does.
local function count_call(kind, tool, step)
  local total, per_tool = counters(kind, tool)
  put(total, n(total) + step)
  if per_tool then put(per_tool, n(per_tool) + step) end
end

-- One check of rule.spend_refusal: the limit ``name`` if it is used up, or if ``own`` (this call's
-- worst case, counted in ``pending`` with the worst cases in flight) would pass it.
local function over(spent, pending, name, own)
  local limit, raw = lim(name)
  if limit and (spent >= limit or (own > 0 and spent + pending > limit)) then return name, raw end
end

-- rule.spend_refusal: the token or dollar limit that is used up, or that this call's worst case
-- (w_*) would pass together with what is spent and held by the calls in flight.
local function spend_refusal(w_cost, w_in, w_out)
  local spent_in, spent_out = n('input_tokens'), n('output_tokens')
  local held_in, held_out = n('held:input_tokens'), n('held:output_tokens')
  local name, raw = over(n('cost_usd'), n('held:cost_usd') + w_cost, 'max_cost_usd', w_cost)
  if not name then name, raw = over(spent_in, held_in + w_in, 'max_input_tokens', w_in) end
  if not name then name, raw = over(spent_out, held_out + w_out, 'max_output_tokens', w_out) end
  if not name then
    name, raw = over(spent_in + spent_out, held_in + held_out + w_in + w_out, 'max_total_tokens', w_in + w_out)
  end
  return name, raw
end

-- What this script knows of the run, for this process's mirror: MIRROR's fields, then the tool's
-- calls and retries, separated by spaces ('' for what it did not read). A reply is one text: a
-- value to parse costs the client more than the server's concatenation.
local function mirror(tool)
  local out = {}
  for i, name in ipairs(MIRROR) do out[i] = s[name] or '' end
  out[#out + 1] = s['tool:' .. tool .. ':calls'] or ''
  out[#out + 1] = s['tool:' .. tool .. ':retries'] or ''
  return table.concat(out, ' ')
end
"""
)

# Reserve one call (or, kind 'check', only say what refuses the run now, changing nothing).
# ARGV: kind, tool ('' none), worst cost, worst input tokens, worst output tokens, force ('1'),
# the tool's own max_calls and max_retries ('' none; the budget's entry wins), ttl seconds.
# Reply: -1 when the run's hash does not exist, else one text "status reason limit mirror..."
# (the mirror's figures, see ``_mirrored_fields``); status 0: refused, 1: granted (reason: what observe mode or force let through).
_RESERVE = (
    _PRELUDE
    + f"local READS = {_lua_list(_RESERVE_READS)}\n"
    + """
local kind, tool = ARGV[1], ARGV[2]
local w_cost, w_in, w_out = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tool_calls, tool_retries = 'tool:' .. tool .. ':calls', 'tool:' .. tool .. ':retries'
local tool_reads = {}
if tool ~= '' then
  tool_reads = {'limit:tool:' .. tool .. ':max_calls', 'limit:tool:' .. tool .. ':max_retries',
                tool_calls, tool_retries}
end
if not read(READS, tool_reads) then return -1 end

-- rule.tool_limits_for: the budget's entry for the tool, over the tool's own default.
local function tool_limit(name, default)
  local own, raw = lim('tool:' .. tool .. ':' .. name)
  if own then return own, raw end
  if default ~= '' then return tonumber(default), default end
  return nil, nil
end

-- rule.count_refusal
local function count_refusal()
  if kind == 'retry' then
    local limit, raw = lim('max_retries')
    if limit and n('retries') >= limit then return 'max_retries', raw end
    if tool ~= '' then
      limit, raw = tool_limit('max_retries', ARGV[8])
      if limit and n(tool_retries) >= limit then return 'tool.max_retries', raw end
    end
    return nil, nil
  end
  local limit, raw = lim('max_steps')
  if limit and n('model_calls') + n('tool_calls') >= limit then return 'max_steps', raw end
  if kind == 'model' then
    limit, raw = lim('max_model_calls')
    if limit and n('model_calls') >= limit then return 'max_model_calls', raw end
    return nil, nil
  end
  limit, raw = lim('max_tool_calls')
  if limit and n('tool_calls') >= limit then return 'max_tool_calls', raw end
  if tool ~= '' then
    limit, raw = tool_limit('max_calls', ARGV[7])
    if limit and n(tool_calls) >= limit then return 'tool.max_calls', raw end
  end
  return nil, nil
end

-- rule.refusal: the whole rule, in its order.
local function refusal()
  if s['cancelled'] == '1' then return 'cancelled', '' end
  local wall, raw = lim('max_wall_clock_s')
  if wall then
    local t = redis.call('TIME')
    if tonumber(t[1]) + tonumber(t[2]) / 1e6 >= n('started_at') + wall then
      return 'max_wall_clock_s', raw
    end
  end
  if kind ~= 'check' then
    local reason, limit = count_refusal()
    if reason or kind == 'retry' then return reason, limit end
  end
  return spend_refusal(w_cost, w_in, w_out)
end

local reason, limit = refusal()
local function answer(status) return table.concat({status, reason or '', limit or '', mirror(tool)}, ' ') end
if kind == 'check' then return answer(1) end
redis.call('EXPIRE', h, ARGV[9])
if reason and ARGV[6] ~= '1' and (s['mode'] == 'enforce' or reason == 'cancelled') then
  return answer(0)
end
count_call(kind, tool, 1)
add('held:cost_usd', w_cost)
add('held:input_tokens', w_in)
add('held:output_tokens', w_out)
write()
return answer(1)
"""
)

# Settle a call: give back the worst case it held, add what it spent, and (release) un-count it.
# ARGV: held cost, held input tokens, held output tokens (to give back); input, output, cache read,
# cache write, reasoning tokens, cost (spent); unreported, unpriced, tool finished ('1' each);
# the kind to un-count ('' none), tool ('' none).
# Reply: as _RESERVE's, with the spend limit now used up as the reason.
_SETTLE = (
    _PRELUDE
    + f"local READS = {_lua_list(_SETTLE_READS)}\n"
    + """
local uncount, tool = ARGV[13], ARGV[14]
local extra = {}
if uncount ~= '' then
  local total, per_tool = counters(uncount, tool)
  extra = {total, per_tool}
end
if not read(READS, extra) then return -1 end
give_back('held:cost_usd', tonumber(ARGV[1]))
give_back('held:input_tokens', tonumber(ARGV[2]))
give_back('held:output_tokens', tonumber(ARGV[3]))
add('input_tokens', tonumber(ARGV[4]))
add('output_tokens', tonumber(ARGV[5]))
add('cache_read_tokens', tonumber(ARGV[6]))
add('cache_write_tokens', tonumber(ARGV[7]))
add('reasoning_tokens', tonumber(ARGV[8]))
add('cost_usd', tonumber(ARGV[9]))
if ARGV[10] == '1' then add('unreported_usage_calls', 1) end
if ARGV[11] == '1' then add('unpriced_calls', 1) end
if ARGV[12] == '1' then add('tools_finished', 1) end
if uncount ~= '' then count_call(uncount, tool, -1) end
write()
local reason, limit = spend_refusal(0, 0, 0)
return table.concat({1, reason or '', limit or '', mirror(tool)}, ' ')
"""
)

# Open a run, or restore a lost one: create the hash from ARGV's fields if it does not exist (the
# first process to open a shared run sets its budget); otherwise add ARGV[2] to its open count.
# ARGV: ttl seconds, openers to add, then field, value pairs.
# Reply: {created (1/0), started_at, the wall-clock limit, server time seconds, microseconds,
# mirror}.
_OPEN = (
    _PRELUDE
    + """
local created = 0
if redis.call('EXISTS', h) == 0 then
  created = 1
  local t = redis.call('TIME')
  redis.call('HSET', h, 'started_at', t[1] .. '.' .. string.format('%06d', t[2]), unpack(ARGV, 3))
elseif ARGV[2] ~= '0' then
  redis.call('HINCRBY', h, 'opened', ARGV[2])
end
redis.call('EXPIRE', h, ARGV[1])
read({'started_at', 'limit:max_wall_clock_s'}, MIRROR)
local t = redis.call('TIME')
return {created, s['started_at'], s['limit:max_wall_clock_s'], t[1], t[2], mirror('')}
"""
)

# Mark the run cancelled. ARGV: ttl seconds. Reply as _RESERVE's.
_CANCEL = (
    _PRELUDE
    + """
if not read({'mode'}, {}) then return -1 end
put('cancelled', 1)
write()
redis.call('EXPIRE', h, ARGV[1])
return '1   ' .. mirror('')
"""
)

# The whole hash and the server's time; ARGV[1] '1' also closes: one opener less, and the hash
# is deleted when none is left. Reply: {1, seconds, microseconds, {field, value, ...}}, or -1.
_READ = """
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return -1 end
local left = 1
if ARGV[1] == '1' then left = redis.call('HINCRBY', h, 'opened', -1) end
local t = redis.call('TIME')
local all = redis.call('HGETALL', h)
if left <= 0 then redis.call('DEL', h) end
return {1, t[1], t[2], all}
"""


@dataclass
class _Known:
    """A run this process has open: its budget, and the mirror of what Redis last said about it."""

    budget: Budget
    mode: Mode
    #: When the run started, on this process's ``time.monotonic`` clock.
    started_monotonic: float
    #: How many scopes of this process opened the run and have not closed it.
    opens: int = 0
    #: ``started_at`` as stored in the hash (the server's clock), once known.
    started_at: Any = None
    #: The wall-clock limit on the hash (the first opener's budget sets it).
    wall_s: float | None = None
    #: The mirror: by script and tool ('' for none), the latest text of ``_MIRROR`` figures that
    #: script returned for a call of that tool, with the ticket of the request that brought it (a
    #: slower reply to an earlier request never replaces a later one). See ``_mirrored_fields``.
    seen: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    #: What was logged for this run already ("lost", "unreachable").
    logged: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def deadline(self) -> float | None:
        return None if self.wall_s is None else self.started_monotonic + self.wall_s


class _Server:
    """Runs the ledger's scripts on Redis: one round trip each, every wait bounded."""

    def __init__(self, client: Any, timeout_s: float) -> None:
        import redis

        self.timeout_s = timeout_s
        self.pool = _pool_for(client, timeout_s)
        # redis-py before 5.3 wants a command name to hand out a connection; later ones warn about it
        name = inspect.signature(self.pool.get_connection).parameters.get("command_name")
        needs_name = name is not None and name.default is inspect.Parameter.empty
        self._checkout_args: tuple[str, ...] = ("EVALSHA",) if needs_name else ()
        self._no_script = redis.exceptions.NoScriptError
        self._timeout = redis.exceptions.TimeoutError

    def run(self, script: _Script, key: str, args: Sequence[Any], within_s: float) -> Any:
        """The script's reply, waited for at most ``within_s``; the connection is dropped on any
        failure (a late reply must never be read as the answer to the next command)."""
        conn = self.pool.get_connection(*self._checkout_args)
        try:
            try:
                return self._ask(conn, within_s, script.evalsha(key, args))
            except self._no_script:  # a restarted or flushed server: send the script itself
                return self._ask(conn, within_s, _pack(("EVAL", script.body, 1, key, *args)))
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self.pool.release(conn)

    def _ask(self, conn: Any, within_s: float, command: bytes) -> Any:
        conn.send_packed_command([command])
        if not conn.can_read(timeout=within_s):
            raise self._timeout(f"no reply from Redis within {within_s:.3g} s")
        return conn.read_response(disable_decoding=True)


def _pack(args: Sequence[Any], head: bytes = b"", count: int = 0) -> bytes:
    """A command in the Redis protocol: ``count`` arguments already packed in ``head``, then
    ``args`` (strings, bytes, numbers). The ledger's arguments are a few short strings and numbers:
    this costs half of what redis-py's general packer does for them."""
    parts = [b"*%d\r\n" % (count + len(args)), head]
    for arg in args:
        kind = type(arg)
        data = arg.encode() if kind is str else arg if kind is bytes else repr(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


@dataclass(frozen=True)
class _Script:
    """A Lua script, called by its SHA1 (EVALSHA) and sent whole when the server lacks it."""

    body: str
    sha: str
    #: ``EVALSHA <sha> 1`` in the Redis protocol: the start of every call of the script.
    head: bytes

    @classmethod
    def of(cls, body: str) -> _Script:
        sha = hashlib.sha1(body.encode()).hexdigest()
        return cls(body, sha, _pack(("EVALSHA", sha, 1))[len(b"*3\r\n") :])

    def evalsha(self, key: str, args: Sequence[Any]) -> bytes:
        return _pack((key, *args), self.head, 3)


_SCRIPTS = {
    name: _Script.of(body)
    for name, body in (
        ("reserve", _RESERVE),
        ("settle", _SETTLE),
        ("open", _OPEN),
        ("cancel", _CANCEL),
        ("read", _READ),
    )
}

#: Connection settings redis-py (8.x) derives per pool: a copy of a pool must make its own.
_PER_POOL_SETTINGS = ("orig_", "maint_notifications_pool_handler", "himport_registry")


def _pool_for(client: Any, timeout_s: float) -> Any:
    """A connection pool of the ledger's own, with the client's settings (address, database,
    credentials, TLS...), socket and connect timeouts of at most ``timeout_s``, and no retries
    (redis-py 6+ retries a failed connect three times with back-off: seconds, not ``timeout_s``).
    A pool of another kind (Sentinel, cluster) is used as it is."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = client.connection_pool
    if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool):
        log.warning(
            "budgetspan: RedisLedger uses the client's %s as it is: connecting is bounded only by "
            "its own timeouts and retries",
            type(pool).__name__,
        )
        return pool
    settings = {k: v for k, v in pool.connection_kwargs.items() if not k.startswith(_PER_POOL_SETTINGS)}
    for name in ("socket_timeout", "socket_connect_timeout"):
        own = settings.get(name)
        settings[name] = timeout_s if own is None else min(own, timeout_s)
    settings.update(retry=Retry(NoBackoff(), 0), retry_on_error=[], retry_on_timeout=False)
    return redis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=pool.max_connections, **settings
    )


def _tokens(value: int | float | None) -> int:
    """A token figure as the ledger keeps it: positive, whole, at most ``TOKEN_CAP``."""
    if value is None or not value > 0:  # None, 0, negatives and NaN add nothing
        return 0
    return int(min(value, TOKEN_CAP))


def _dollars(value: float | None) -> float:
    """A dollar figure as the ledger keeps it: positive, at most ``COST_CAP``."""
    if value is None or not value > 0:
        return 0.0
    return float(min(value, COST_CAP))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _refusal(reason: Any, limit: Any, tool: str | None) -> Refusal | None:
    """The refusal in a script's reply (``reason`` b'' for none), as ``rule.refusal`` gives it."""
    if not reason:
        return None
    name = _text(reason)
    raw = _text(limit)
    value: float | None
    if raw == "":
        value = None
    elif name in FLOAT_LIMIT_NAMES:
        value = float(raw)
    else:
        value = int(raw)
    on_tool = tool if name in (Limit.TOOL_MAX_CALLS.value, Limit.TOOL_MAX_RETRIES.value) else None
    return Refusal(name, value, on_tool)


def _usage_from(fields: dict[str, Any]) -> Usage:
    """A run's usage from its hash's fields (or a mirror of them)."""

    def i(name: str) -> int:
        v = fields.get(name)
        return 0 if v is None else int(v)

    cost = fields.get("cost_usd")
    u = Usage(
        model_calls=i("model_calls"),
        tool_calls=i("tool_calls"),
        retries=i("retries"),
        input_tokens=i("input_tokens"),
        output_tokens=i("output_tokens"),
        cache_read_tokens=i("cache_read_tokens"),
        cache_write_tokens=i("cache_write_tokens"),
        reasoning_tokens=i("reasoning_tokens"),
        cost_usd=0.0 if cost is None else float(cost),
        unpriced_calls=i("unpriced_calls"),
        unreported_usage_calls=i("unreported_usage_calls"),
        tools_finished=i("tools_finished"),
    )
    for k, v in fields.items():
        if k.startswith("tool:") and v is not None:  # tool:{name}:calls | tool:{name}:retries
            name, what = k[len("tool:") : k.rfind(":")], k[k.rfind(":") + 1 :]
            (u.tool_calls_by_name if what == "calls" else u.tool_retries_by_name)[name] = int(v)
    return u


def _mirrored_fields(known: _Known) -> dict[str, bytes]:
    """The run's hash as this process last heard of it: every figure from the latest reply that
    carried it (call with ``known.lock`` held)."""
    fields: dict[str, bytes] = {}
    for (_script, tool), (_ticket, text) in sorted(known.seen.items(), key=lambda item: item[1][0]):
        names = (*_MIRROR, f"tool:{tool}:calls", f"tool:{tool}:retries")
        fields.update((name, value) for name, value in zip(names, text.split(b" "), strict=True) if value)
    return fields


#: A field longer than Redis's ``hash-max-listpack-value`` (64 bytes by default), so that Redis keeps
#: a run's hash as a hash table: in a listpack, its compact form for small hashes, every field is
#: found by a scan, and the reserve script then costs 12% more (bench/README.md).
_ABOUT = "budgetspan run ledger; this field is longer than 64 bytes to keep the hash a hash table"


def _budget_fields(budget: Budget, mode: Mode) -> dict[str, Any]:
    """The hash fields that hold a run's budget."""
    fields: dict[str, Any] = {"about": _ABOUT, "mode": mode.value}
    for name, value in budget.limits().items():
        fields["limit:" + name] = value
    for tool, tl in budget.tools.items():
        if tl.max_calls is not None:
            fields[f"limit:tool:{tool}:max_calls"] = tl.max_calls
        if tl.max_retries is not None:
            fields[f"limit:tool:{tool}:max_retries"] = tl.max_retries
    return fields


class RedisLedger(Ledger):
    """Ledger on a Redis server (a ``redis.Redis`` client; any thread). See the module's docstring.

    ``timeout_s``: the longest any call waits for Redis. ``ttl_s``: how long a run's hash outlives
    its last use (a process that dies without closing its runs leaves them to expire).
    """

    def __init__(
        self, client: Any, ttl_s: int = 86_400, on_error: str = "open", timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        if on_error not in ON_ERROR_MODES:
            raise ValueError(
                f"RedisLedger(on_error={on_error!r}): expected one of {', '.join(ON_ERROR_MODES)}"
            )
        import redis

        self.client = client
        self.ttl_s = ttl_s
        self.on_error = on_error
        self._server = _Server(client, timeout_s)
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._known: dict[str, _Known] = {}  # the runs this process has open
        self._tickets = itertools.count()
        self._local = InMemoryLedger()  # runs accounted here since Redis failed them
        self._local_runs: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def key(run_id: str) -> str:
        return _PREFIX + run_id

    # --- one script on Redis ----------------------------------------------------------------
    def _within(self, known: _Known | None) -> float:
        """How long this call may wait for Redis: ``timeout_s``, and no longer than the run has
        left (but ``MIN_WAIT_S`` at least, for the server's refusal at the deadline)."""
        deadline = None if known is None else known.deadline
        if deadline is None:
            return self._server.timeout_s
        left = max(deadline - time.monotonic(), MIN_WAIT_S)
        return min(self._server.timeout_s, left)

    def _call(
        self, script: str, run_id: str, args: Sequence[Any], tool: str | None = None, mirror: bool = True
    ) -> Any:
        """Run ``script`` on the run's hash and remember what it says. A run open here whose hash
        is gone is restored and the script run again; a run unknown here raises KeyError."""
        known = self._known.get(run_id)
        within = self._within(known)
        ticket = next(self._tickets)
        reply = self._server.run(_SCRIPTS[script], self.key(run_id), args, within)
        if reply == -1:
            if known is None:
                raise KeyError(f"run {run_id!r} is not open in the ledger")
            self._restore(run_id, known, within)
            ticket = next(self._tickets)
            reply = self._server.run(_SCRIPTS[script], self.key(run_id), args, within)
            if reply == -1:  # deleted again at once: give up on this one call
                raise KeyError(f"run {run_id!r} is not open in the ledger")
        if known is not None and mirror:
            self._remember(known, ticket, script, reply.split(b" ", 3)[3], tool)
        return reply

    def _remember(
        self, known: _Known, ticket: int, script: str, text: bytes, tool: str | None = None
    ) -> None:
        """Keep a reply's mirror text unless the reply to a later request was kept already."""
        key = (script, tool or "")
        with known.lock:
            kept = known.seen.get(key)
            if kept is None or kept[0] < ticket:
                known.seen[key] = (ticket, text)

    def _open_on_redis(self, run_id: str, known: _Known, openers: int, within: float) -> None:
        """Open the run (``openers`` 1) or restore it (0) on Redis from the budget and the mirror."""
        with known.lock:
            fields = _budget_fields(known.budget, known.mode)
            if known.started_at is not None:
                fields["started_at"] = known.started_at
            fields.update(_mirrored_fields(known))
            fields["opened"] = max(int(fields.get("opened", 0)), known.opens)
            seen_before = bool(known.seen)
            ticket = next(self._tickets)
        pairs = [item for pair in fields.items() for item in pair]
        reply = self._server.run(_SCRIPTS["open"], self.key(run_id), [self.ttl_s, openers, *pairs], within)
        now = time.monotonic()
        created, started_at, wall, sec, usec, text = reply
        if created == 1 and seen_before and openers:
            self._lost(run_id, known)
        with known.lock:
            known.started_at = started_at
            known.wall_s = None if wall is None else float(wall)
            server_now = int(sec) + int(usec) / 1e6
            known.started_monotonic = now - (server_now - float(started_at))
        self._remember(known, ticket, "open", text)

    def _restore(self, run_id: str, known: _Known, within: float) -> None:
        self._lost(run_id, known)
        self._open_on_redis(run_id, known, 0, within)

    def _lost(self, run_id: str, known: _Known) -> None:
        """The run's hash was gone while the run is open here: an internal error, logged once."""
        if "lost" not in known.logged:
            known.logged.add("lost")
            log.warning(
                "budgetspan: run %s was missing from the Redis ledger (Redis restarted, the key "
                "expired or was deleted); restored from what this process last knew",
                run_id,
            )
        events.emit("on_internal_error", "redis_ledger")

    # --- outages --------------------------------------------------------------------------------
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
                known = _Known(Budget(), Mode.ENFORCE, time.monotonic())
            self._local.open(run_id, known.budget, known.mode, started_at=known.started_monotonic)
            self._local_runs.add(run_id)
        self._report(
            run_id,
            error,
            "budgetspan: Redis ledger unreachable for run %s (%s: %s); this process accounts the run "
            "locally from now on (counts restart from zero)",
        )

    # --- the Ledger interface -------------------------------------------------------------------
    def open(self, run_id: str, budget: Budget, mode: Mode, started_at: float | None = None) -> None:
        with self._lock:
            known = self._known.get(run_id)
            if known is None:
                start = time.monotonic() if started_at is None else started_at
                known = self._known[run_id] = _Known(budget, mode, start)
            known.opens += 1
        if run_id in self._local_runs:
            return
        try:
            self._open_on_redis(run_id, known, 1, self._within(known))
        except self._errors as e:
            self._outage(run_id, e)

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
        if kind is CallKind.MODEL:  # only model calls spend tokens and dollars
            cost, held_in = _dollars(worst_case_cost), _tokens(worst_case_input_tokens)
            held_out = _tokens(worst_case_tokens)
        else:
            cost, held_in, held_out = 0.0, 0, 0
        if run_id not in self._local_runs:
            try:
                return self._reserve_on_redis(
                    run_id, kind, tool, (cost, held_in, held_out), force, tool_limits
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
    ) -> Reservation:
        tl = tool_limits or NO_TOOL_LIMITS
        args = (
            kind.value,
            tool or "",
            *worst,
            "1" if force else "0",
            "" if tl.max_calls is None else tl.max_calls,
            "" if tl.max_retries is None else tl.max_retries,
            self.ttl_s,
        )
        status, reason, limit, _ = self._call("reserve", run_id, args, tool).split(b" ", 3)
        found = _refusal(reason, limit, tool)
        if status == b"0":
            assert found is not None
            raise LedgerRefused(found)
        cost, held_in, held_out = worst
        return Reservation(
            run_id,
            kind,
            tool,
            cost,
            found,
            worst_case_input_tokens=held_in,
            worst_case_output_tokens=held_out,
        )

    def _settle(
        self,
        run_id: str,
        *,
        reservation: Reservation | None = None,
        spend: Spend | None = None,
        flags: tuple[bool, bool, bool] = (False, False, False),
        uncount: bool = False,
    ) -> Refusal | None:
        """One settle script: give back ``reservation``'s worst case, add ``spend``, set the flags
        (unreported, unpriced, tool finished), un-count the call (``uncount``). Returns the spend
        limit now used up."""
        r, sp = reservation, spend or _NO_SPEND
        tool = None if r is None else r.tool
        args = (
            0.0 if r is None else r.worst_case_cost,
            0 if r is None else r.worst_case_input_tokens,
            0 if r is None else r.worst_case_output_tokens,
            _tokens(sp.input_tokens),
            _tokens(sp.output_tokens),
            _tokens(sp.cache_read_tokens),
            _tokens(sp.cache_write_tokens),
            _tokens(sp.reasoning_tokens),
            _dollars(sp.cost_usd),
            "1" if flags[0] else "0",
            "1" if flags[1] else "0",
            "1" if flags[2] else "0",
            r.kind.value if uncount and r is not None else "",
            tool or "",
        )
        _, reason, limit, _ = self._call("settle", run_id, args, tool).split(b" ", 3)
        return _refusal(reason, limit, None)

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
            try:
                return self._settle(run_id, reservation=reservation, spend=spend, flags=flags)
            except KeyError:  # the run is closed (or was never open here): nothing to settle
                return None
            except self._errors as e:
                self._outage(run_id, e)
            reservation.done = False  # the local ledger marks it done itself
        return self._local.commit(
            reservation, spend, finished=finished, unreported=unreported, unpriced=unpriced
        )

    def add_spend(self, run_id: str, spend: Spend) -> Refusal | None:
        if run_id not in self._local_runs:
            try:
                return self._settle(run_id, spend=spend)
            except KeyError:
                return None
            except self._errors as e:
                self._outage(run_id, e)
        return self._local.add_spend(run_id, spend)

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
            self._settle(reservation.run_id, reservation=reservation, uncount=True)
        except KeyError:
            pass
        except self._errors as e:
            self._outage(reservation.run_id, e)

    def usage(self, run_id: str) -> Usage:
        if run_id not in self._local_runs:
            try:
                return self._read(run_id, close=False)
            except self._errors as e:
                self._outage(run_id, e)
                known = self._known.get(run_id)
                if run_id not in self._local_runs and known is not None:
                    return self._usage_of(known)  # closed mode: what this process last knew
        return self._local.usage(run_id)

    def _read(self, run_id: str, close: bool) -> Usage:
        """The run's usage from its hash (and, ``close``, one opener less)."""
        if close:  # a lost run is not restored just to be closed
            reply = self._server.run(
                _SCRIPTS["read"], self.key(run_id), ["1"], self._within(self._known.get(run_id))
            )
            if reply == -1:
                raise KeyError(run_id)
        else:
            reply = self._call("read", run_id, ["0"], mirror=False)
        _, sec, usec, flat = reply
        fields = {_text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
        u = _usage_from(fields)
        if "started_at" in fields:
            u.wall_clock_s = max(0.0, int(sec) + int(usec) / 1e6 - float(fields["started_at"]))
        return u

    def check(self, run_id: str) -> Refusal | None:
        if run_id not in self._local_runs:
            try:
                reply = self._call("reserve", run_id, ("check", "", 0.0, 0, 0, "0", "", "", self.ttl_s))
                _, reason, limit, _ = reply.split(b" ", 3)
                return _refusal(reason, limit, None)
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
            return self._read(run_id, close=True)
        except KeyError:
            self._lost(run_id, known)
        except self._errors as e:
            self._report(run_id, e, "budgetspan: Redis ledger unreachable for run %s (%s: %s)")
        return self._usage_of(known)

    def _usage_of(self, known: _Known) -> Usage:
        """The run's usage as this process last heard it from Redis."""
        with known.lock:
            fields = _mirrored_fields(known)
        u = _usage_from(fields)
        u.wall_clock_s = max(0.0, time.monotonic() - known.started_monotonic)
        return u

    def deadline(self, run_id: str) -> float | None:
        if run_id in self._local_runs:
            return self._local.deadline(run_id)
        known = self._known.get(run_id)
        return None if known is None else known.deadline


__all__ = ["COST_CAP", "DEFAULT_TIMEOUT_S", "TOKEN_CAP", "RedisLedger"]
