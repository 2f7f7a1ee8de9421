"""The Redis ledger's Lua scripts: the refusal rule of ``rule.py`` transcribed, and the writes.

Every operation is one script and one round trip; each reads what it needs with one HMGET.
``tests/accounting/test_rule_table.py`` runs one table of cases through ``rule.refusal`` and the
reserve script, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence

from budgetspan.accounting.redis_scope_lua import SCOPE_LUA

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
local function window_table(f, warned)
  local {_locals("x", _NF)} = {", ".join(["0"] * _NF)}
  if f then {_locals("x", _NF)} = struct.unpack(FFMT, f) end
  return {{{_fields(MIRROR, "x")}, warned = tonumber(warned) or false, ['?exists'] = f ~= false}}
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
# in Python floats. A scope window's hash keeps its figures the same way (redis_scope_lua.py).
PRELUDE = (
    f"""
local MIRROR, FIG = {lua_list(MIRROR)}, {lua_index(MIRROR)}
local LIMS, LIM = {lua_list(LIMIT_FIELDS)}, {lua_index(LIMIT_FIELDS)}
local LEGACY_RUN = {lua_list((*MIRROR, *LIMIT_FIELDS))}
local LK = {{{", ".join(f"{name} = 'limit:{name}'" for name in KEPT_LIMITS)}}}
local KK = {{{", ".join(f"{name} = 'keep:{name}'" for name in KEPT_LIMITS)}}}
local FFMT, LFMT = '<{"d" * len(MIRROR)}', '<{"d" * len(LIMIT_FIELDS)}'
local TOKEN_CAP, COST_CAP = {TOKEN_CAP}, {COST_CAP:.0f}
"""
    + """
-- (The library's top level runs at FUNCTION LOAD, where no library but ``redis`` is at hand: it
-- only makes tables and functions.)
local CAPS = {['cost_usd'] = COST_CAP, ['held:cost_usd'] = COST_CAP}
local NAN = 0 / 0
-- One call's state (``call`` sets it): its keys and arguments (SETTLE_RESERVE points A at each
-- part's), the hash in hand and its fields (with the changes not written yet: ``?c`` the text
-- fields, ``?d`` whether the figures changed), the run's figures packed as last read or written.
local K, A, h, s, FPACK
-- SETTLE_RESERVE: AHEAD while its settlement runs (which then answers its status only), AHEAD_DONE after.
local AHEAD, AHEAD_DONE = false, false
-- SHORT (a call outside the final_response phase of a run with a reserve): each limit less the
-- part kept for the final answer, never below zero (rule.without_reserve).
local SHORT = false
-- SETTLE_RESERVE: each scope window as the settle part left it.
local AHEAD_SCOPES = {}
"""
    + TABLES
    + """

-- Run ``fn`` (one of the operations below) on a fresh state.
local function call(fn, keys, argv)
  K, A, h, s, FPACK = keys, argv, keys[1], {}, nil
  AHEAD, AHEAD_DONE, SHORT, AHEAD_SCOPES = false, false, false, {}
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
-- (In SETTLE_RESERVE the reservation reads only the fields the settlement ahead of it did not.)
local function read(extra)
  local ask = AHEAD_DONE and {} or {'F', 'L', 'mode', 'started_at', 'opened'}
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

-- A figure (0 when absent); a limit (nil: none; NaN in ``L``), less the part kept for the final
-- answer (SHORT). Every value in ``s`` is a number (but mode, opened and ``?`` fields).
local function n(name) return s[name] or 0 end
local function lim(name)
  local limit = s[LK[name] or ('limit:' .. name)]
  if not limit or limit ~= limit then return nil end
  if SHORT then
    local keep = s[KK[name] or ('keep:' .. name)]
    if keep and keep == keep then return math.max(limit - keep, 0) end
  end
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
-- Store the changes of the hash in hand with one HSET. In SETTLE_RESERVE the settlement's wait
-- for the reservation's, to go with them (one HSET per hash: ``flush`` at the end).
local function write()
  if AHEAD then return end
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
  local limit = lim(name)
  if limit and (spent >= limit or (own > 0 and spent + pending > limit)) then return name, limit end
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

-- What this script knows of the run, for this process's mirror: MIRROR's figures packed, then
-- its open count (a text field: jobs/ledger.py changes it too) and the tool's calls and retries
-- as text ('' when not read), separated by spaces. A reply is one
-- text: a value to parse costs the client more than the server's concatenation.
local function mirror(tool)
  if s['?d'] then FPACK = pack_figures() end  -- (a settlement not written yet: SETTLE_RESERVE)
  return table.concat({FPACK, fmt(s['opened']), fmt(s['tool:' .. tool .. ':calls']),
    fmt(s['tool:' .. tool .. ':retries'])}, ' ')
end
"""
    + SCOPE_LUA
)

# Reserve one call (or, kind 'check', only say what refuses the run now, changing nothing).
# ARGV: kind, tool ('' none), the worst cost, input and output tokens packed as 3 little-endian
# doubles (``WORST`` in redis_mirror.py), force ('1'),
# the tool's own max_calls and max_retries ('' none; the budget's entry wins), ttl seconds,
# '1' when the limits less the reserve for the final answer apply (``keep:NAME`` fields); then,
# for each scope window KEYS[2..], the ttl its use refreshes ('0': its expiry stays).
# Reply: -1 when the run's hash does not exist, else one text "status reason limit mirror..."
# (the mirror's figures, see ``_mirrored_fields``); status 0: refused, 1: granted (reason: what observe mode or force let through).
RESERVE_BODY = """
local kind, tool = ARGV[1], ARGV[2]
local w_cost, w_in, w_out = struct.unpack('<ddd', ARGV[3])
local tool_calls, tool_retries = 'tool:' .. tool .. ':calls', 'tool:' .. tool .. ':retries'
local tool_reads = {}
if tool ~= '' then
  tool_reads = {'limit:tool:' .. tool .. ':max_calls', 'limit:tool:' .. tool .. ':max_retries',
                tool_calls, tool_retries}
end
SHORT = ARGV[8] == '1'
if not read(tool_reads) then return -1 end

-- rule.tool_limits_for: the budget's entry for the tool, over the tool's own default.
local function tool_limit(name, default)
  local own = lim('tool:' .. tool .. ':' .. name)
  if own then return own end
  if default ~= '' then return tonumber(default) end
  return nil
end

-- rule.count_refusal
local function count_refusal()
  if kind == 'retry' then
    local limit = lim('max_retries')
    if limit and n('retries') >= limit then return 'max_retries', limit end
    if tool ~= '' then
      limit = tool_limit('max_retries', ARGV[6])
      if limit and n(tool_retries) >= limit then return 'tool.max_retries', limit end
    end
    return nil, nil
  end
  local limit = lim('max_steps')
  if limit and n('model_calls') + n('tool_calls') >= limit then return 'max_steps', limit end
  if kind == 'model' then
    limit = lim('max_model_calls')
    if limit and n('model_calls') >= limit then return 'max_model_calls', limit end
    return nil, nil
  end
  limit = lim('max_tool_calls')
  if limit and n('tool_calls') >= limit then return 'max_tool_calls', limit end
  if tool ~= '' then
    limit = tool_limit('max_calls', ARGV[5])
    if limit and n(tool_calls) >= limit then return 'tool.max_calls', limit end
  end
  return nil, nil
end

-- rule.refusal: the whole rule, in its order.
local function refusal()
  if n('cancelled') == 1 then return 'cancelled', '' end
  local wall = lim('max_wall_clock_s')
  if wall then
    local t = redis.call('TIME')
    if tonumber(t[1]) + tonumber(t[2]) / 1e6 >= n('started_at') + wall then
      return 'max_wall_clock_s', wall
    end
  end
  if kind ~= 'check' then
    local reason, limit = count_refusal()
    if reason or kind == 'retry' then return reason, limit end
  end
  return spend_refusal(w_cost, w_in, w_out)
end

local reason, limit = refusal()
local run, warned = s, {}
local function answer(code)
  h, s = KEYS[1], run
  return table.concat({status(code, warned), reason or '', fmt(limit), mirror(tool)}, ' ')
end
if kind == 'check' then return answer(1) end
redis.call('EXPIRE', h, ARGV[7])
local enforce = ARGV[4] ~= '1' and s['mode'] == 'enforce'
if reason and (enforce or (ARGV[4] ~= '1' and reason == 'cancelled')) then return answer(0) end

-- The scope windows: the same rule without the run's clock, cancellation and tool limits; the
-- first that refuses the call names itself in the reason ('max_cost_usd#3#199.5': KEYS[3] has used
-- 199.5). A window's hash is made by its first call and expires at the window's end.
local total = counters(kind, '')
local scopes, at = {}, RESERVE_SCOPE_ARGV
for i = 2, #KEYS do
  scopes[i], at = load_scope(i, at)
  if not reason then
    local r, l = count_refusal()
    if not r and kind ~= 'retry' then r, l = spend_refusal(w_cost, w_in, w_out) end
    if r then
      reason, limit = r .. '#' .. i .. '#' .. string.format('%.17g', used(r)), l
      if enforce then return answer(0) end
    end
  end
end

-- Granted: counted, and its worst case held, in every scope window and in the run.
local function take()
  count_call(kind, tool, 1)
  add('held:cost_usd', w_cost)
  add('held:input_tokens', w_in)
  add('held:output_tokens', w_out)
end
for i = 2, #KEYS do
  local scope = scopes[i]
  h, s = KEYS[i], scope[1]
  local first = not scope[4]
  put(total, n(total) + 1)
  add('held:cost_usd', w_cost)
  add('held:input_tokens', w_in)
  add('held:output_tokens', w_out)
  warn_check(i, warned, scope)
  write()
  -- a window without an end lives on while in use; a window's first call sets when it ends
  local refresh = ARGV[scope[2]]
  if refresh ~= '0' then
    redis.call('EXPIRE', h, refresh)
  elseif first and redis.call('TTL', h) < 0 then
    redis.call('EXPIRE', h, ARGV[scope[2] + 1])
  end
end
h, s = KEYS[1], run
take()
write()
return answer(1)
"""

# Settle a call: give back the worst case it held, add what it spent, and (release) un-count it.
# ARGV: its figures packed as 12 little-endian doubles (``SETTLE_NUMBERS`` in redis_pending.py:
# held cost, input and output tokens to give back; input, output, cache read, cache write,
# reasoning tokens and cost spent; unreported, unpriced, tool finished, 1 or 0), the kind to
# un-count ('' none), tool ('' none). Reply: as RESERVE's, with the spend limit now used up as the reason.
SETTLE_BODY = """
local uncount, tool = ARGV[2], ARGV[3]
local back_cost, back_in, back_out, spent_in, spent_out, spent_cr, spent_cw, spent_rs, spent_cost,
  unreported, unpriced, finished = struct.unpack('<dddddddddddd', ARGV[1])
local extra = {}
if uncount ~= '' then
  local total, per_tool = counters(uncount, tool)
  extra = {total, per_tool}
end
if not read(extra) then return -1 end
local function apply()
  give_back('held:cost_usd', back_cost)
  give_back('held:input_tokens', back_in)
  give_back('held:output_tokens', back_out)
  add('input_tokens', spent_in)
  add('output_tokens', spent_out)
  add('cache_read_tokens', spent_cr)
  add('cache_write_tokens', spent_cw)
  add('reasoning_tokens', spent_rs)
  add('cost_usd', spent_cost)
  if unreported == 1 then add('unreported_usage_calls', 1) end
  if unpriced == 1 then add('unpriced_calls', 1) end
  if finished == 1 then add('tools_finished', 1) end
  if uncount ~= '' then count_call(uncount, tool, -1) end
end
apply()
write()
-- The same in the call's scope windows (KEYS[2..]): worst cases given back, calls un-counted,
-- input and output tokens and dollars added. A window gone (it ended) settles nothing.
local run, warned, at = s, {}, SETTLE_SCOPE_ARGV
local total = nil
if uncount ~= '' then total = counters(uncount, '') end
for i = 2, #KEYS do
  local scope
  scope, at = load_scope(i, at)
  if scope[4] then
    give_back('held:cost_usd', back_cost)
    give_back('held:input_tokens', back_in)
    give_back('held:output_tokens', back_out)
    add('input_tokens', spent_in)
    add('output_tokens', spent_out)
    add('cost_usd', spent_cost)
    if total then put(total, math.max(n(total) - 1, 0)) end
    warn_check(i, warned, scope)
    write()
  end
end
h, s = KEYS[1], run
if AHEAD then return status(1, warned) end
local reason, limit = spend_refusal(0, 0, 0)
return table.concat({status(1, warned), reason or '', fmt(limit), mirror(tool)}, ' ')
"""
