"""The Redis ledger's Lua: the hashes' layout and the helpers every script shares (the hot path,
reserve and settle with ``rule.py``'s rule transcribed, is in ``redis_hot_lua``).

Every operation is one script and one round trip; each reads what it needs with one HMGET.
``tests/accounting/test_rule_table.py`` runs one table of cases through ``rule.refusal`` and the
reserve script, so the two cannot drift.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

#: The largest token count (per figure and per sum) the ledger keeps: exact in a Lua number (a
#: double), and so is the sum of two (a total of input and output tokens).
TOKEN_CAP = 10**15
#: The largest dollar amount the ledger keeps.
COST_CAP = 1e12

#: The figures each script tells this process about the run it ran on (those it read or wrote),
#: kept as the process's mirror of the run; then come the calls and retries of the call's tool.
MIRROR = (
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
)
#: A scope window's figures (what its limits compare to, and the worst cases held in flight), packed
#: in its string value in this order (little-endian doubles), then whether it warned (``WINDOW``).
WINDOW_FIGURES = (
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
#: A scope window's string: ``WINDOW_FIGURES``, then 1 if it warned (else 0), then its birth (the
#: scope clock of the call that made it; 0: carried over from a hash): a rolling window's next
#: record has the same key, and a call's settlement must reach only the record it reserved in.
WINDOW = struct.Struct(f"<{len(WINDOW_FIGURES) + 2}d")
SPEND_LIMITS = ("max_cost_usd", "max_input_tokens", "max_output_tokens", "max_total_tokens")
#: The limits a run can keep part of for its final answer (``keep:NAME`` fields).
KEPT_LIMITS = (
    "max_model_calls",
    "max_tool_calls",
    "max_steps",
    "max_retries",
    "max_wall_clock_s",
    *SPEND_LIMITS,
)
#: The run's limits and the parts of them kept for the final answer, packed in the run's ``L``
#: field in this order (NaN: not set).
LIMIT_FIELDS = (*("limit:" + name for name in KEPT_LIMITS), *("keep:" + name for name in KEPT_LIMITS))


def lua_list(names: Sequence[str]) -> str:
    return "{" + ", ".join(f"'{name}'" for name in names) + "}"


def lua_index(names: Sequence[str]) -> str:
    """A Lua table of each name's place in ``names`` (from 1)."""
    return "{" + ", ".join(f"['{name}'] = {i}" for i, name in enumerate(names, 1)) + "}"


def _locals(prefix: str, count: int) -> str:
    return ", ".join(f"{prefix}{i}" for i in range(1, count + 1))


def _fields(names: Sequence[str], prefix: str) -> str:
    return ", ".join(f"['{name}'] = {prefix}{i}" for i, name in enumerate(names, 1))


_NF, _NL = len(MIRROR), len(LIMIT_FIELDS)
# A hash in hand as one table made at once (no table grown field by field, no loop: measured,
# bench/README.md): a run's (its packed figures and limits, mode, start, open count; NaN: a limit
# not set) and a scope window's (its figures, whether it warned, whether it exists); and the
# figures of ``s`` packed again.
TABLES = f"""
local function run_table(f, l, mode, started, opened)
  local {_locals("x", _NF)} = {", ".join(["0"] * _NF)}
  if f then {_locals("x", _NF)} = struct.unpack(FFMT, f) end
  local {_locals("y", _NL)} = {", ".join(["NAN"] * _NL)}
  if l then {_locals("y", _NL)} = struct.unpack(LFMT, l) end
  return {{{_fields(MIRROR, "x")}, {_fields(LIMIT_FIELDS, "y")},
    mode = mode, started_at = tonumber(started), ['?started_at'] = started, opened = opened}}
end
local function pack_figures()
  return struct.pack(FFMT, {", ".join(f"s['{name}']" for name in MIRROR)})
end
"""

# The helpers every script shares. The run's hash keeps its figures (``MIRROR``) packed in one
# field ``F`` and its limits in ``L`` (doubles, little-endian: one HMGET and one struct.unpack
# instead of a field and a number parsed per figure; bench/README.md). ``s`` holds the fields
# of the hash in hand by name, as ``read`` found them and ``put`` changed them; ``write`` stores
# the changes with one HSET. Sums are made in Lua numbers (doubles), as InMemoryLedger makes them
# in Python floats. A scope window is a string of its own packed figures (redis_hot_lua.py).
PRELUDE = (
    f"""
local MIRROR, FIG = {lua_list(MIRROR)}, {lua_index(MIRROR)}
local LIMS, LIM = {lua_list(LIMIT_FIELDS)}, {lua_index(LIMIT_FIELDS)}
local LEGACY_RUN = {lua_list((*MIRROR, *LIMIT_FIELDS))}
local LK = {{{", ".join(f"{name} = 'limit:{name}'" for name in KEPT_LIMITS)}}}
local FFMT, LFMT = '<{"d" * len(MIRROR)}', '<{"d" * len(LIMIT_FIELDS)}'
local TOKEN_CAP, COST_CAP = {TOKEN_CAP}, {COST_CAP:.0f}
"""
    + """
-- (The library's top level runs at FUNCTION LOAD, where no library but ``redis`` is at hand: it
-- only makes tables and functions.)
local NAN = 0 / 0
-- One call's state (``call`` sets it): its keys and arguments, the hash in hand and its fields (with the changes not written yet: ``?c`` the text
-- fields, ``?d`` whether the figures changed), the run's figures packed as last read or written.
local K, A, h, s, FPACK
"""
    + TABLES
    + """

-- Keep ``key`` at least ``ttl`` seconds more, never less: a peer with a shorter ``ttl_s`` does not
-- cut short what a process refreshing only every tenth of its own ttl counts on.
local function expire_at_least(key, ttl)
  if redis.call('TTL', key) < tonumber(ttl) then redis.call('EXPIRE', key, ttl) end
end

-- Run ``fn`` (one of the operations below) on a fresh state.
local function call(fn, keys, argv)
  K, A, h, s, FPACK = keys, argv, keys[1], {}, nil
  return fn(keys, argv)
end

-- A hash written by budgetspan before figures were packed (one text field per figure and limit):
-- its figures (and a run's limits) read once and packed from its next write on, so that an
-- upgrade neither resets a window's spend nor drops a run's limits. Also: whether any was there.
local function legacy(names)
  local got = redis.call('HMGET', h, unpack(names))
  local out, found = {}, false
  for i, name in ipairs(names) do
    local v = tonumber(got[i])
    if v then out[name], found = v, true end
  end
  for _, name in ipairs(MIRROR) do out[name] = out[name] or 0 end
  out['?d'] = found
  return out, found
end

-- Read the run's hash (its figures, limits, mode, start, open count) and the fields ``extra``
-- (numbers: a tool's counts and limits) in one HMGET; false when the run's hash does not exist.
local function read(extra)
  local ask = {'F', 'L', 'mode', 'started_at', 'opened'}
  local first = #ask
  for _, name in ipairs(extra) do if not FIG[name] and s[name] == nil then ask[#ask + 1] = name end end
  if #ask > 0 then
    local got = redis.call('HMGET', h, unpack(ask))
    if first > 0 then
      if not got[3] then return false end
      if got[2] then
        s = run_table(got[1], got[2], got[3], got[4], got[5])
      else  -- no packed limits: a run opened by an earlier budgetspan
        s = legacy(LEGACY_RUN)
        local limits = {}
        for i, name in ipairs(LIMS) do limits[i] = s[name] or NAN end
        s['?c'], s['?d'] = {'L', struct.pack(LFMT, unpack(limits, 1, #LIMS))}, true
        s['mode'], s['started_at'], s['?started_at'], s['opened'] = got[3], tonumber(got[4]), got[4], got[5]
      end
      FPACK = got[1] or pack_figures()
    end
    for i = first + 1, #ask do s[ask[i]] = tonumber(got[i]) or false end
  end
  return s['mode'] ~= false and s['mode'] ~= nil
end

-- A limit (nil: none; NaN in ``L``). Every value in ``s`` is a number (but mode, opened and
-- ``?`` fields).
local function lim(name)
  local limit = s[LK[name] or ('limit:' .. name)]
  if not limit or limit ~= limit then return nil end
  return limit
end
-- A limit or figure as the reply gives it: 17 significant digits read back as the same double.
local function fmt(v)
  if type(v) == 'number' then return string.format('%.17g', v) end
  return v or ''
end

local function put(name, value)
  s[name] = value
  if FIG[name] then
    s['?d'] = true
    return
  end
  local c = s['?c'] or {}
  c[#c + 1] = name
  c[#c + 1] = string.format('%.17g', value)
  s['?c'] = c
end
-- Store the changes of the hash in hand with one HSET.
local function write()
  local c = s['?c'] or {}
  if s['?d'] then
    local packed = pack_figures()
    if h == K[1] then FPACK = packed end
    c[#c + 1] = 'F'
    c[#c + 1] = packed
  end
  if #c > 0 then redis.call('HSET', h, unpack(c)) end
  s['?c'], s['?d'] = nil, nil
end

-- What this script knows of the run, for this process's mirror: MIRROR's figures packed, then
-- its open count (a text field: jobs/ledger.py changes it too) and the tool's calls and retries
-- as text ('' when not read), separated by spaces. A reply is one
-- text: a value to parse costs the client more than the server's concatenation.
local function mirror(tool)
  return table.concat({FPACK, fmt(s['opened']), fmt(s['tool:' .. tool .. ':calls']),
    fmt(s['tool:' .. tool .. ':retries'])}, ' ')
end
"""
)
