"""The Lua of the hot path: reserve, settle, and both in one script (``SETTLE_RESERVE``), on the
run's hash and its scope windows' strings. ``rule.py``'s rule transcribed on plain arrays.

The run's packed figures (``F``: ``MIRROR``'s doubles) become one array made at once
(``{struct.unpack(...)}``), indexed by constant positions written into the Lua from Python; a
window's (``WINDOW_FIGURES``, fewer) an array with the same places; the limits likewise (the
run's ``L``, a window's from the call). A limit not set is NaN, which no comparison of the rule
passes (``x >= NaN`` and ``x > NaN`` are false): no test per limit. The run's hash is read with
one HMGET and written with one HSET; all windows are read with one MGET, and each written with
one SET that also sets or keeps its expiry (an MSET would drop every window's ttl); the reply is
one text. No table of fields by name, no helper per figure: in Redis's Lua each function call and table costs more than the
arithmetic (bench/README.md). ``tests/accounting/test_rule_table.py`` runs one table of cases
through ``rule.refusal`` and these scripts.
"""

from __future__ import annotations

import re

from budgetspan.accounting.budget import LIMIT_NAMES
from budgetspan.accounting.redis_scripts import KEPT_LIMITS, MIRROR, WINDOW_FIGURES
from budgetspan.accounting.redis_window_lua import WINDOW_PACKED, WINDOW_PLACES, WINDOWS_LUA
from budgetspan.accounting.scopes import WINDOW_LIMITS

# A scope window's limits come packed in the run's order (``scopes.wire``; NaN: not set).
assert WINDOW_LIMITS == KEPT_LIMITS

#: Where the scope windows' arguments start in each script's ARGV (1 per window: its limits,
#: warning thresholds, flags and expiry packed, ``scopes.wire``).
RESERVE_SCOPE_ARGV, SETTLE_SCOPE_ARGV, SETTLE_RESERVE_SCOPE_ARGV = 3, 4, 5

_SHORT = {
    "model_calls": "MC",
    "tool_calls": "TC",
    "retries": "RT",
    "input_tokens": "TI",
    "output_tokens": "TO",
    "cache_read_tokens": "CR",
    "cache_write_tokens": "CW",
    "reasoning_tokens": "RS",
    "cost_usd": "CO",
    "unpriced_calls": "UP",
    "unreported_usage_calls": "UR",
    "tools_finished": "TF",
    "held:cost_usd": "HC",
    "held:input_tokens": "HI",
    "held:output_tokens": "HO",
    "cancelled": "CA",
}
_LIMIT_SHORT = {
    "max_model_calls": "LM",
    "max_tool_calls": "LT",
    "max_steps": "LS",
    "max_retries": "LR",
    "max_wall_clock_s": "LW",
    "max_cost_usd": "LC",
    "max_input_tokens": "LI",
    "max_output_tokens": "LO",
    "max_total_tokens": "LX",
}
assert set(_SHORT) == set(MIRROR) and set(_LIMIT_SHORT) == set(KEPT_LIMITS)

#: Each ``$NAME`` of the Lua below: a figure's place in ``F``, a limit's in the limits' array.
_PLACES = {
    **{short: MIRROR.index(name) + 1 for name, short in _SHORT.items()},
    **{short: KEPT_LIMITS.index(name) + 1 for name, short in _LIMIT_SHORT.items()},
    "NK": len(KEPT_LIMITS),
    **{name: len(MIRROR) + i for i, name in enumerate(WINDOW_PLACES, 1)},
}


def _places(lua: str) -> str:
    return re.sub(r"\$(\w+)", lambda m: str(_PLACES[m.group(1)]), lua)


# The rule on arrays (f: figures, l: limits; NaN none), and what a window's limit compares to.
_RULE = (
    """
local WFMT = '<"""
    + "d" * (2 * len(KEPT_LIMITS) + 5)
    + """'
local MODEL, TOOL, RETRY, CHECK = 1, 2, 3, 4
-- rule.count_refusal, but a tool's own limits (the run's only: ``hot``)
local function count_refusal(kind, f, l)
  if kind == RETRY then
    if f[$RT] >= l[$LR] then return 'max_retries', l[$LR] end
    return nil
  end
  if f[$MC] + f[$TC] >= l[$LS] then return 'max_steps', l[$LS] end
  if kind == MODEL then
    if f[$MC] >= l[$LM] then return 'max_model_calls', l[$LM] end
    return nil
  end
  if f[$TC] >= l[$LT] then return 'max_tool_calls', l[$LT] end
  return nil
end
-- rule.spend_refusal: used up, or this call's worst case (wc, wi, wo) would pass it together
-- with what is spent and held by the calls in flight (the sums in the rule's order).
local function spend_refusal(f, l, wc, wi, wo)
  local co, ti, to = f[$CO], f[$TI], f[$TO]
  local limit = l[$LC]
  if co >= limit or (wc > 0 and co + (f[$HC] + wc) > limit) then return 'max_cost_usd', limit end
  limit = l[$LI]
  if ti >= limit or (wi > 0 and ti + (f[$HI] + wi) > limit) then return 'max_input_tokens', limit end
  limit = l[$LO]
  if to >= limit or (wo > 0 and to + (f[$HO] + wo) > limit) then return 'max_output_tokens', limit end
  limit = l[$LX]
  local own = wi + wo
  if ti + to >= limit or (own > 0 and ti + to + (f[$HI] + f[$HO] + own) > limit) then
    return 'max_total_tokens', limit
  end
  return nil
end
-- The figure the limit at place j compares to (as Usage.value_of).
local function used_at(j, f)
  if j == $LM then return f[$MC] elseif j == $LT then return f[$TC]
  elseif j == $LS then return f[$MC] + f[$TC] elseif j == $LR then return f[$RT]
  elseif j == $LC then return f[$CO] elseif j == $LI then return f[$TI]
  elseif j == $LO then return f[$TO] else return f[$TI] + f[$TO] end
end
local PLACE = {"""
    + ", ".join(f"{name} = ${short}" for name, short in _LIMIT_SHORT.items())
    + """}
-- The place of the call count of ``kind`` (MODEL, TOOL, RETRY), and the tool's field.
local COUNT_PLACE = {$MC, $TC, $RT}
local function tool_field(kind, tool)
  if tool == '' or kind == MODEL then return nil end
  return 'tool:' .. tool .. (kind == TOOL and ':calls' or ':retries')
end
-- Settle in figures f: the worst case given back (never below zero), the spend added (never past
-- its cap; a window adds tokens and dollars only), the call un-counted. (No math.min: a C call
-- costs more than a comparison.)
local function settle_into(f, run, bc, bi, bo, si, so, scr, scw, srs, sco, unrep, unpr, fin, uncount)
  local x
  if bc > 0 then x = f[$HC] - bc; if x < 0 then x = 0 end; f[$HC] = x end
  if bi > 0 then x = f[$HI] - bi; if x < 0 then x = 0 end; f[$HI] = x end
  if bo > 0 then x = f[$HO] - bo; if x < 0 then x = 0 end; f[$HO] = x end
  if si > 0 then x = f[$TI] + si; if x > TOKEN_CAP then x = TOKEN_CAP end; f[$TI] = x end
  if so > 0 then x = f[$TO] + so; if x > TOKEN_CAP then x = TOKEN_CAP end; f[$TO] = x end
  if sco > 0 then x = f[$CO] + sco; if x > COST_CAP then x = COST_CAP end; f[$CO] = x end
  if run then
    if scr > 0 then x = f[$CR] + scr; if x > TOKEN_CAP then x = TOKEN_CAP end; f[$CR] = x end
    if scw > 0 then x = f[$CW] + scw; if x > TOKEN_CAP then x = TOKEN_CAP end; f[$CW] = x end
    if srs > 0 then x = f[$RS] + srs; if x > TOKEN_CAP then x = TOKEN_CAP end; f[$RS] = x end
    if unrep == 1 and f[$UR] < TOKEN_CAP then f[$UR] = f[$UR] + 1 end
    if unpr == 1 and f[$UP] < TOKEN_CAP then f[$UP] = f[$UP] + 1 end
    if fin == 1 and f[$TF] < TOKEN_CAP then f[$TF] = f[$TF] + 1 end
    if uncount > 0 then local j = COUNT_PLACE[uncount]; f[j] = f[j] - 1 end
  elseif uncount > 0 then
    local j = COUNT_PLACE[uncount]
    if f[j] > 0 then f[j] = f[j] - 1 else f[j] = 0 end
  end
end
-- Take a call in figures f: counted, its worst case held (never past the caps).
local function take_into(f, j, wc, wi, wo)
  local x
  f[j] = f[j] + 1
  if wc > 0 then x = f[$HC] + wc; if x > COST_CAP then x = COST_CAP end; f[$HC] = x end
  if wi > 0 then x = f[$HI] + wi; if x > TOKEN_CAP then x = TOKEN_CAP end; f[$HI] = x end
  if wo > 0 then x = f[$HO] + wo; if x > TOKEN_CAP then x = TOKEN_CAP end; f[$HO] = x end
end
local function g(v) return string.format('%.17g', v) end
-- Limits unpacked, by their packed text: the library outlives its calls, so a budget's limits
-- are unpacked once (until 1,000 are kept: then afresh), not on every call. Never changed.
local UNPACKED, N_UNPACKED = {}, 0
local function unpacked(fmt, packed)
  local l = UNPACKED[packed]
  if l then return l end
  l = {struct.unpack(fmt, packed)}
  if N_UNPACKED >= 1000 then UNPACKED, N_UNPACKED = {}, 0 end
  UNPACKED[packed], N_UNPACKED = l, N_UNPACKED + 1
  return l
end
-- An empty table never written to (none made per call where nothing is added).
local NONE = {}
"""
)

_RUN = (
    """
-- The run's hash: one HMGET of its figures, limits, mode, start and open count, and each tool's
-- limits and counts in ``tools`` (T: by field, numbers). A run opened by an earlier budgetspan
-- (text fields) is converted first. nil: no hash.
local function read_run(key, tools)
  local got
  local T = NONE
  if #tools == 0 then
    got = redis.call('HMGET', key, 'F', 'L', 'mode', 'started_at', 'opened')
  else
    local ask = {'F', 'L', 'mode', 'started_at', 'opened'}
    for _, tool in ipairs(tools) do
      local p = 'tool:' .. tool .. ':'
      for _, name in ipairs({'limit:' .. p .. 'max_calls', 'limit:' .. p .. 'max_retries', p .. 'calls', p .. 'retries'}) do
        ask[#ask + 1] = name
      end
    end
    got = redis.call('HMGET', key, unpack(ask))
    T = {}
    for i = 6, #ask do T[ask[i]] = tonumber(got[i]) end
  end
  if not got[3] then return nil end
  if not got[2] then  -- written by an earlier budgetspan: packed once, then read
    h, s = key, {}
    read({})
    write()
    return read_run(key, tools)
  end
  if not got[1] then got[1] = struct.pack(FFMT, unpack(ZEROS)) end  -- (no figures: none spent)
  return got, T
end

-- Store what changed: the run's figures (and its tools' counts, text) with one HSET, each
-- window's figures and whether it warned with one SET. Returns the run's figures packed.
local function finish(key, got, f, changed, T, tdirty, W)
  local packed = got[1]
  if changed then packed = struct.pack(FFMT, unpack(f, 1, NF)) end
  if not changed then  -- (a refused reservation)
  elseif #tdirty == 0 then
    redis.call('HSET', key, 'F', packed)
  else
    local c = {'F', packed}
    for _, name in ipairs(tdirty) do c[#c + 1] = name; c[#c + 1] = g(T[name]) end
    redis.call('HSET', key, unpack(c))
  end
  for i = 2, #K do  -- one SET per window: its expiry set with it, or kept
    local w = W[i]
    if w[$WCHANGED] then
      local f, ttl = w, w[$WTTL]
      local v = struct.pack(WINFMT, """
    + WINDOW_PACKED
    + """, w[$WWARNED] and 1 or 0, w[$WBORN])
      if ttl then redis.call('SET', w[$WKEY], v, 'EX', ttl) else redis.call('SET', w[$WKEY], v, 'KEEPTTL') end
    end
  end
  return packed
end

-- The reply: "status reason limit" and the mirror (the run's figures packed, its open count, the
-- tool's calls and retries as text, '' when not read), separated by spaces.
local function reply(code, reason, limit, packed, got, T, tool)
  local calls, retries = '', ''
  if tool ~= '' then
    local v = T['tool:' .. tool .. ':calls']
    if v then calls = g(v) end
    v = T['tool:' .. tool .. ':retries']
    if v then retries = g(v) end
  end
  return code .. ' ' .. (reason or '') .. ' ' .. (limit and g(limit) or '') .. ' ' .. packed .. ' '
    .. (got[5] or '') .. ' ' .. calls .. ' ' .. retries
end
"""
)

_HOT = """
-- Settle (``settles``: its numbers packed at the start of ARGV[1], its tool the next argument)
-- and/or reserve (``reserves``: its numbers packed after, its tool the next) one call on the run
-- (KEYS[1]) and its scope windows (KEYS[2..], one argument each from ARGV[wat]). -1: no run.
local function hot(settles, reserves, wat)  -- long: the rule and its writes, on arrays, in one place
  local key = K[1]
  local stool, rtool, uncount = '', '', 0
  local bc, bi, bo, si, so, scr, scw, srs, sco, unrep, unpr, fin, next_at
  local SB = NONE  -- the settled call's rolling windows' births ('2:1733.5,4:...'; ``born``)
  if settles then
    bc, bi, bo, si, so, scr, scw, srs, sco, unrep, unpr, fin, uncount, next_at = struct.unpack(SFMT, A[1])
    stool = A[2]
    if A[3] ~= '' then
      SB = {}
      for i, b in string.gmatch(A[3], '(%d+):([^,]+)') do SB[tonumber(i)] = tonumber(b) end
    end
  end
  local kind, w_cost, w_in, w_out, force, short, clock, ttl, tool_calls, tool_retries, now
  if reserves then
    kind, w_cost, w_in, w_out, force, short, clock, ttl, tool_calls, tool_retries, now = struct.unpack(RFMT, A[1], next_at or 1)
    rtool = A[wat - 1]
  end
  local tools = NONE
  if (uncount > 0 and stool ~= '') or rtool ~= '' then
    tools = {}
    if uncount > 0 and stool ~= '' then tools[1] = stool end
    if rtool ~= '' then tools[#tools + 1] = rtool end
  end
  local got, T = read_run(key, tools)
  if not got then return -1 end
  local f, changed, tdirty = {struct.unpack(FFMT, got[1])}, false, NONE
  if #tools > 0 then tdirty = {} end
  local W, swarned = NONE, NONE
  if #K > 1 then W, swarned = windows(wat), {} end
  if settles then  -- the settlement: worst case given back, spend added, the call un-counted (release)
    settle_into(f, true, bc, bi, bo, si, so, scr, scw, srs, sco, unrep, unpr, fin, uncount)
    local name = uncount > 0 and tool_field(uncount, stool)
    if name then T[name] = (T[name] or 0) - 1; tdirty[#tdirty + 1] = name end
    changed = true
  end
  for i = 2, #K do  -- the settlement in each window (a window gone settles nothing)
    local w = W[i]
    if settles and w[$WEXISTS] and (SB[i] == nil or SB[i] == w[$WBORN]) then  -- (the record it reserved in)
      settle_into(w, false, bc, bi, bo, si, so, scr, scw, srs, sco, unrep, unpr, fin, uncount)
      w[$WCHANGED] = true
      -- (its warning looked at once, at the end: here, after the reservation, or at its refusal)
      if not reserves then warn_check(i, w, swarned) end
    end
  end
  if not reserves then
    local settled = status(1, swarned)
    local packed = finish(key, got, f, changed, T, tdirty, W)
    local reason, limit = spend_refusal(f, unpacked(LFMT, got[2]), 0, 0, 0)
    return reply(settled, reason, limit, packed, got, T, stool)
  end

  -- The reservation: rule.refusal on the run (cancelled, wall clock, counts, spend), then on each
  -- window (counts, spend); granted, it is counted and its worst case held in each.
  local l = unpacked(LFMT, got[2])
  if short == 1 then  -- rule.without_reserve: each limit less the part kept, never below 0
    local whole = l
    l = {}
    for j = 1, $NK * 2 do l[j] = whole[j] end
    for j = 1, $NK do
      local keep = l[j + $NK]
      if keep == keep and l[j] == l[j] then
        local x = l[j] - keep
        if x < 0 then x = 0 end
        l[j] = x
      end
    end
  end
  local reason, limit
  if f[$CA] == 1 then
    reason = 'cancelled'
  elseif clock == 1 and l[$LW] == l[$LW] then  -- (the process asks when the deadline may be near)
    local t = redis.call('TIME')
    if tonumber(t[1]) + tonumber(t[2]) / 1e6 >= (tonumber(got[4]) or 0) + l[$LW] then
      reason, limit = 'max_wall_clock_s', l[$LW]
    end
  end
  if not reason and kind ~= CHECK then
    reason, limit = count_refusal(kind, f, l)
    if not reason and rtool ~= '' and kind ~= MODEL then  -- the budget's entry, over the tool's own
      local what = kind == TOOL and 'max_calls' or 'max_retries'
      local own = T['limit:tool:' .. rtool .. ':' .. what] or (kind == TOOL and tool_calls or tool_retries)
      if own == own and (T[tool_field(kind, rtool)] or 0) >= own then reason, limit = 'tool.' .. what, own end
    end
  end
  if not reason and kind ~= RETRY then reason, limit = spend_refusal(f, l, w_cost, w_in, w_out) end
  if kind == CHECK then return reply(1, reason, limit, got[1], got, T, rtool) end  -- (never settles)
  if ttl > 0 then expire_at_least(key, ttl) end
  local enforce = force ~= 1 and got[3] == 'enforce'
  local refused = reason and (enforce or (force ~= 1 and reason == 'cancelled'))
  if not refused then
    for i = 2, #K do
      if reason then break end
      local w = W[i]
      local wf, wl = w, w[$WL]
      local r, lw = count_refusal(kind, wf, wl)
      if not r and kind ~= RETRY then r, lw = spend_refusal(wf, wl, w_cost, w_in, w_out) end
      if r then  -- named with its window: 'max_cost_usd#3#199.5' (KEYS[3] has used 199.5)
        reason, limit, refused = r .. '#' .. i .. '#' .. g(used_at(PLACE[r], wf)), lw, enforce
      end
    end
  end
  local code, packed = 0, nil
  if refused then
    for i = 2, #K do
      local w = W[i]
      if settles and w[$WEXISTS] then warn_check(i, w, swarned) end
      -- a scope without a window is in use while refused too: its expiry moves (a used-up
      -- lifetime budget must not expire 7 days after its last granted call and start afresh)
      if w[$WEXISTS] and w[$WL][$NK * 2 + 2] == 1 then w[$WTTL], w[$WCHANGED] = ttl_of(w[$WL], now), true end
    end
    packed = finish(key, got, f, changed, T, tdirty, W)
  else
    local j, rwarned, born = COUNT_PLACE[kind], NONE, NONE
    if #K > 1 then rwarned, born = {}, {} end
    for i = 2, #K do
      local w = W[i]
      take_into(w, j, w_cost, w_in, w_out)
      w[$WCHANGED] = true
      warn_check(i, w, rwarned)
      -- its ttl: set by a window's first call (to its end), and by each of a scope without a window
      local wl = w[$WL]
      if not w[$WEXISTS] or wl[$NK * 2 + 2] == 1 then w[$WTTL] = ttl_of(wl, now) end
      if not w[$WEXISTS] then w[$WBORN] = now end
      if wl[$NK * 2 + 5] == 1 then  -- rolling: which record (its next has the same key)
        born[#born + 1] = i .. ':' .. g(w[$WBORN])
      end
    end
    take_into(f, j, w_cost, w_in, w_out)
    local name = tool_field(kind, rtool)
    if name then T[name] = (T[name] or 0) + 1; tdirty[#tdirty + 1] = name end
    packed = finish(key, got, f, true, T, tdirty, W)
    code = status(1, rwarned)
    if #born > 0 then code = code .. '|' .. table.concat(born, ',') end
  end
  local text = reply(code, reason, limit, packed, got, T, rtool)
  if settles then return status(1, swarned) .. ' ' .. text end
  return text
end
"""

# The order in which a window's limits are looked at for its warning (``Budget.limits``' order).
_WARN_ORDER = [n for n in LIMIT_NAMES if n in KEPT_LIMITS and n != "max_wall_clock_s"]

#: The hot path's helpers, part of the library's prelude (after ``redis_scripts.PRELUDE``).
HOT_LUA = _places(
    f"local NF, SFMT, RFMT = {len(MIRROR)}, '<{'d' * 13}', '<{'d' * 11}'\n"
    + f"local WINFMT = '<{'d' * (len(WINDOW_FIGURES) + 2)}'\n"
    + f"local ZEROS = {{{', '.join(['0'] * len(MIRROR))}}}\n"
    + "local WARN_ORDER = {"
    + ", ".join(repr(n) for n in _WARN_ORDER)
    + "}\n"
    + "local WARN_PLACES = {"
    + ", ".join(str(KEPT_LIMITS.index(n) + 1) for n in _WARN_ORDER)
    + "}\n"
    + _RULE
    + WINDOWS_LUA
    + _RUN
    + _HOT
)

# Reserve one call (or, kind CHECK, only say what refuses the run now, changing nothing).
# ARGV: ``RESERVE_NUMBERS`` packed (redis_ledger.py: the kind, the worst case, force, the limits
# less the reserve for the final answer, the ttl to refresh, the tool's own limits, the scope
# clock for the windows' expiry), the tool ('' none); then 1 per scope window (KEYS[2..]).
# Reply: -1 when the run's hash does not exist, else one text "status reason limit mirror..."
# (status 0: refused, 1: granted, then 'w' and the windows' warnings; reason: what refused, or
# what observe mode or force let through; a window's 'max_cost_usd#3#199.5').
RESERVE_BODY = f"return hot(false, true, {RESERVE_SCOPE_ARGV})"
# Settle a call: give back the worst case it held, add what it spent, and (release) un-count it.
# ARGV: ``SETTLE_NUMBERS`` packed (redis_pending.py), the tool ('' none); then 1 per scope
# window. Reply: as RESERVE's, with the spend limit now used up as the reason.
SETTLE_BODY = f"return hot(true, false, {SETTLE_SCOPE_ARGV})"
# Both in one round trip: settle this process's previous call of the run, then reserve the next.
# ARGV: SETTLE's and RESERVE's numbers in one packed argument, the settled call's tool, the
# reserved call's; the windows' arguments once, after (the two calls have the same windows).
# Reply: -1 when the run's hash does not exist, else the settlement's status (its warnings), a
# space, and RESERVE's reply. See ``redis_pending``.
SETTLE_RESERVE_BODY = f"return hot(true, true, {SETTLE_RESERVE_SCOPE_ARGV})"
