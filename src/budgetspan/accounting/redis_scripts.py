"""The Redis ledger's Lua scripts: the refusal rule of ``rule.py`` transcribed, and the writes.

Every operation is one script and one round trip; each reads what it needs with one HMGET.
``tests/accounting/test_rule_table.py`` runs one table of cases through ``rule.refusal`` and the
reserve script, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence

from budgetspan.accounting.redis_scope_lua import RESERVE_SCOPE_ARGV, SCOPE_LUA, SETTLE_SCOPE_ARGV

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
    "opened",
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
#: What the reserve script reads (and the tool's limits and counts when the call names a tool).
RESERVE_READS = (
    "mode",
    "cancelled",
    "started_at",
    *(
        "limit:" + name
        for name in ("max_wall_clock_s", "max_retries", "max_steps", "max_model_calls", "max_tool_calls")
    ),
    *("limit:" + name for name in SPEND_LIMITS),
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
SETTLE_READS = (
    "mode",
    *("limit:" + name for name in SPEND_LIMITS),
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


def lua_list(names: Sequence[str]) -> str:
    return "{" + ", ".join(f"'{name}'" for name in names) + "}"


# The helpers every script shares. ``s`` holds the fields of the run's hash as one HMGET read them
# (false when absent) and as ``put`` changed them; ``write`` stores the changes with one HSET.
# Sums are made in Lua numbers (doubles), as InMemoryLedger makes them in Python floats, and kept
# as text with 17 significant digits, which reads back as the same double.
PRELUDE = (
    f"""
local MIRROR = {lua_list(MIRROR)}
local RESERVE_READS, SETTLE_READS = {lua_list(RESERVE_READS)}, {lua_list(SETTLE_READS)}
local KEEPS = {lua_list(KEPT_LIMITS)}
local TOKEN_CAP, COST_CAP = {TOKEN_CAP}, {COST_CAP:.0f}
"""
    + """
local CAPS = {['cost_usd'] = COST_CAP, ['held:cost_usd'] = COST_CAP}
-- One call's state (``call`` sets it): its keys and arguments (SETTLE_RESERVE points A at each
-- part's), the hash in hand, its fields, the changes to write.
local K, A, h, s, changes
-- SETTLE_RESERVE: AHEAD while its settlement runs (which then answers its status only), AHEAD_DONE after.
local AHEAD, AHEAD_DONE = false, false
-- SHORT (a call outside the final_response phase of a run with a reserve): each limit less the
-- part kept for the final answer, never below zero (rule.without_reserve).
local SHORT = false
-- SETTLE_RESERVE: each scope window as the settle part left it.
local AHEAD_SCOPES = {}

-- Run ``fn`` (one of the operations below) on a fresh state.
local function call(fn, keys, argv)
  K, A, h, s, changes = keys, argv, keys[1], {}, {}
  AHEAD, AHEAD_DONE, SHORT, AHEAD_SCOPES = false, false, false, {}
  return fn(keys, argv)
end

-- Read ``names`` and ``extra`` in one HMGET; false when the run's hash does not exist.
-- (A field ``s`` holds already, read by the settlement ahead in SETTLE_RESERVE, is not read again.)
local function read(names, extra)
  local ask = {}
  for _, name in ipairs(names) do if not AHEAD_DONE or s[name] == nil then ask[#ask + 1] = name end end
  for _, name in ipairs(extra) do if not AHEAD_DONE or s[name] == nil then ask[#ask + 1] = name end end
  if #ask > 0 then
    local got = redis.call('HMGET', h, unpack(ask))
    for i, name in ipairs(ask) do s[name] = got[i] end
  end
  return s['mode'] ~= false
end

-- A figure (0 when absent), and a limit (its number and the text it was stored as; nil: none).
local function n(name) return tonumber(s[name]) or 0 end
local function lim(name)
  local raw = s['limit:' .. name]
  if raw then
    local keep = SHORT and tonumber(s['keep:' .. name] or '')
    if keep then
      local short = math.max(tonumber(raw) - keep, 0)
      return short, string.format('%.17g', short)
    end
    return tonumber(raw), raw
  end
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
    + SCOPE_LUA
)

# Reserve one call (or, kind 'check', only say what refuses the run now, changing nothing).
# ARGV: kind, tool ('' none), worst cost, worst input tokens, worst output tokens, force ('1'),
# the tool's own max_calls and max_retries ('' none; the budget's entry wins), ttl seconds,
# '1' when the limits less the reserve for the final answer apply (``keep:NAME`` fields); then,
# for each scope window KEYS[2..], the ttl its use refreshes ('0': its expiry stays).
# Reply: -1 when the run's hash does not exist, else one text "status reason limit mirror..."
# (the mirror's figures, see ``_mirrored_fields``); status 0: refused, 1: granted (reason: what observe mode or force let through).
RESERVE_BODY = """
local kind, tool = ARGV[1], ARGV[2]
local w_cost, w_in, w_out = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tool_calls, tool_retries = 'tool:' .. tool .. ':calls', 'tool:' .. tool .. ':retries'
local tool_reads = {}
if tool ~= '' then
  tool_reads = {'limit:tool:' .. tool .. ':max_calls', 'limit:tool:' .. tool .. ':max_retries',
                tool_calls, tool_retries}
end
if ARGV[10] == '1' then
  SHORT = true
  for _, name in ipairs(KEEPS) do tool_reads[#tool_reads + 1] = 'keep:' .. name end
end
if not read(RESERVE_READS, tool_reads) then return -1 end

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
local run, warned = s, {}
local function answer(code)
  h, s = KEYS[1], run
  return table.concat({status(code, warned), reason or '', limit or '', mirror(tool)}, ' ')
end
if kind == 'check' then return answer(1) end
redis.call('EXPIRE', h, ARGV[9])
local enforce = ARGV[6] ~= '1' and s['mode'] == 'enforce'
if reason and (enforce or (ARGV[6] ~= '1' and reason == 'cancelled')) then return answer(0) end

-- The scope windows: the same rule without the run's clock, cancellation and tool limits; the
-- first that refuses the call names itself in the reason ('max_cost_usd#3#199.5': KEYS[3] has used
-- 199.5). A window's hash is made by its first call and expires at the window's end.
local total = counters(kind, '')
local scopes, at = {}, RESERVE_SCOPE_ARGV
for i = 2, #KEYS do
  scopes[i], at = load_scope(i, at, {total})
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
  h, s, changes = KEYS[i], scope[1], {}
  local seen, first = scope[4], not s[total]
  put(total, n(total) + 1)
  if seen['held:cost_usd'] then add('held:cost_usd', w_cost) end
  if seen['held:input_tokens'] then add('held:input_tokens', w_in) end
  if seen['held:output_tokens'] then add('held:output_tokens', w_out) end
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
h, s, changes = KEYS[1], run, {}
take()
write()
return answer(1)
"""

# Settle a call: give back the worst case it held, add what it spent, and (release) un-count it.
# ARGV: held cost, held input tokens, held output tokens (to give back); input, output, cache read,
# cache write, reasoning tokens, cost (spent); unreported, unpriced, tool finished ('1' each);
# the kind to un-count ('' none), tool ('' none).
# Reply: as RESERVE's, with the spend limit now used up as the reason.
SETTLE_BODY = """
local uncount, tool = ARGV[13], ARGV[14]
local extra = {}
if uncount ~= '' then
  local total, per_tool = counters(uncount, tool)
  extra = {total, per_tool}
end
if not read(SETTLE_READS, extra) then return -1 end
local function apply()
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
end
apply()
write()
-- The same in the call's scope windows (KEYS[2..]): worst cases given back, calls un-counted,
-- input and output tokens and dollars added. A window gone (it ended: none of its call counts
-- is there) settles nothing.
local run, warned, at = s, {}, SETTLE_SCOPE_ARGV
local total = nil
if uncount ~= '' then total = counters(uncount, '') end
local HELD_ARGV = {{'held:cost_usd', 1}, {'held:input_tokens', 2}, {'held:output_tokens', 3}}
for i = 2, #KEYS do
  local scope
  scope, at = load_scope(i, at, {'model_calls', 'tool_calls', 'retries', 'input_tokens', 'output_tokens', 'cost_usd'})
  if s['model_calls'] or s['tool_calls'] or s['retries'] then
    for _, pair in ipairs(HELD_ARGV) do
      if scope[4][pair[1]] then give_back(pair[1], tonumber(ARGV[pair[2]])) end
    end
    add('input_tokens', tonumber(ARGV[4]))
    add('output_tokens', tonumber(ARGV[5]))
    add('cost_usd', tonumber(ARGV[9]))
    if total then put(total, math.max(n(total) - 1, 0)) end
    warn_check(i, warned, scope)
    write()
  end
end
h, s = KEYS[1], run
if AHEAD then return status(1, warned) end
local reason, limit = spend_refusal(0, 0, 0)
return table.concat({status(1, warned), reason or '', limit or '', mirror(tool)}, ' ')
"""

# One round trip for two operations: settle this process's previous call of the run (SETTLE's
# arguments), then reserve the next (RESERVE's); the scope windows' arguments come once, after
# both (the two calls have the same windows). Reply: -1 when the run's hash does not exist, else
# the settlement's status (its warnings), a space, and RESERVE's reply. See ``redis_pending``.
SETTLE_RESERVE_BODY = (
    f"local N_SETTLE, N_RESERVE = {SETTLE_SCOPE_ARGV - 1}, {RESERVE_SCOPE_ARGV - 1}\n"
    + """
local sargv, rargv = {}, {}
for i = 1, N_SETTLE do sargv[i] = ARGV[i] end
for i = 1, N_RESERVE do rargv[i] = ARGV[N_SETTLE + i] end
for i = N_SETTLE + N_RESERVE + 1, #ARGV do sargv[i - N_RESERVE], rargv[i - N_SETTLE] = ARGV[i], ARGV[i] end
AHEAD, A = true, sargv
local settled = settle(KEYS, sargv)
if settled == -1 then return -1 end
AHEAD, AHEAD_DONE, A, h, changes = false, true, rargv, KEYS[1], {}
return settled .. ' ' .. reserve(KEYS, rargv)
"""
)

# Open a run, or restore a lost one: create the hash from ARGV's fields if it does not exist (the
# first process to open a shared run sets its budget); otherwise add ARGV[2] to its open count.
# ARGV: ttl seconds, openers to add, then field, value pairs.
# Reply: {created (1/0), started_at, the wall-clock limit, server time seconds, microseconds,
# mirror}.
OPEN_BODY = """
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

# Mark the run cancelled. ARGV: ttl seconds. Reply as RESERVE's.
CANCEL_BODY = """
if not read({'mode'}, {}) then return -1 end
put('cancelled', 1)
write()
redis.call('EXPIRE', h, ARGV[1])
return '1   ' .. mirror('')
"""

# The whole hash and the server's time; ARGV[1] '1' also closes: one opener less, and the hash
# is deleted when none is left. Reply: {1, seconds, microseconds, {field, value, ...}}, or -1.
READ_BODY = """
if redis.call('EXISTS', h) == 0 then return -1 end
local left = 1
if ARGV[1] == '1' then left = redis.call('HINCRBY', h, 'opened', -1) end
local t = redis.call('TIME')
local all = redis.call('HGETALL', h)
if left <= 0 then redis.call('DEL', h) end
return {1, t[1], t[2], all}
"""

# Raise the run's limits (a limit that is not set stays unset): ``Ledger.extend``.
# ARGV: ttl seconds, then limit name, amount pairs. Reply as RESERVE's.
EXTEND_BODY = """
if not read({'mode'}, {}) then return -1 end
for i = 2, #ARGV, 2 do
  local field = 'limit:' .. ARGV[i]
  local raw = redis.call('HGET', h, field)
  if raw then put(field, tonumber(raw) + tonumber(ARGV[i + 1])) end
end
write()
redis.call('EXPIRE', h, ARGV[1])
return '1   ' .. mirror('')
"""

#: The operations, by name: each a Lua function of (KEYS, ARGV), defined once in the library.
BODIES = {
    "reserve": RESERVE_BODY,
    "settle": SETTLE_BODY,
    "settle_reserve": SETTLE_RESERVE_BODY,
    "open": OPEN_BODY,
    "cancel": CANCEL_BODY,
    "read": READ_BODY,
    "extend": EXTEND_BODY,
}

#: The helpers and every operation, as one chunk of Lua: loaded once as a Redis 7 function library
#: (``redis_wire``), or, on an older server, sent as a script ending with the operation's call.
CORE = PRELUDE + "".join(f"local function {name}(KEYS, ARGV)\n{body}\nend\n" for name, body in BODIES.items())
