"""The Lua for scope windows (budgets above the run), part of every ledger script's prelude:
each window's limits come with the call, its hash holds only its figures."""

from __future__ import annotations

#: Each scope window's arguments: the ttl its use refreshes ('0': none), the ttl of a new window,
#: the warning share ('' none), the number k of its limits, then k pairs (limit name, value). The
#: window's hash holds its figures only; the limits come with the call.
#: Where the scope windows' arguments start in the reserve and the settle script's ARGV (after
#: the run's own: see RESERVE and SETTLE in redis_scripts.py).
RESERVE_SCOPE_ARGV, SETTLE_SCOPE_ARGV = 9, 4

SCOPE_LUA = (
    f"local RESERVE_SCOPE_ARGV, SETTLE_SCOPE_ARGV = {RESERVE_SCOPE_ARGV}, {SETTLE_SCOPE_ARGV}\n"
    + """
-- Scope windows (KEYS[2..]): the figures each limit is compared to (as Usage.value_of).
local USES = {max_model_calls = {'model_calls'}, max_tool_calls = {'tool_calls'},
  max_steps = {'model_calls', 'tool_calls'}, max_retries = {'retries'},
  max_input_tokens = {'input_tokens'}, max_output_tokens = {'output_tokens'},
  max_total_tokens = {'input_tokens', 'output_tokens'}, max_cost_usd = {'cost_usd'}}
local NONE = {}
local function used(name)
  local total = 0
  for _, f in ipairs(USES[name] or NONE) do total = total + n(f) end
  return total
end

-- Scope window i, its arguments from ARGV[at] (RESERVE_SCOPE_ARGV in redis_scripts.py): its
-- limits go into ``s``, and one HMGET reads its figures (packed in ``F``, as the run's) and whether
-- it warned. Returns the window's state: {s, at, its limit names, whether its hash exists}, and
-- where the next window's arguments start. In SETTLE_RESERVE the reserve part takes each window
-- as the settle part left it (no HMGET).
local function load_scope(i, at)
  local kept = AHEAD_DONE and AHEAD_SCOPES[i]
  h = K[i]
  if kept then
    s = kept
  else
    local got = redis.call('HMGET', h, 'F', 'warned')
    if got[1] then
      s = window_table(got[1], got[2])
    else  -- a new window, or one an earlier budgetspan kept as text fields
      local found
      s, found = legacy(MIRROR)
      s['warned'], s['?exists'] = tonumber(got[2]) or false, found
    end
  end
  local limits = s['?limits']
  if not limits then  -- (the reservation in SETTLE_RESERVE has the window's limits parsed already)
    limits = {}
    for j = 1, tonumber(A[at + 3]) do
      local name = A[at + 2 + 2 * j]
      limits[j] = name
      s[LK[name] or ('limit:' .. name)] = tonumber(A[at + 3 + 2 * j])
    end
    s['?limits'], s['?share'] = limits, tonumber(A[at + 2])
  end
  if AHEAD then AHEAD_SCOPES[i] = s end
  return {s, at, limits, s['?exists']}, at + 4 + 2 * #limits
end

"""
    + """
-- The scope's warning threshold (a share of any of its limits), reached for the first time in its
-- window: noted in ``warned`` as 'i:limit:used'.
local function warn_check(i, warned, scope)
  local share = s['?share']
  if not share or s['warned'] == 1 then return end
  for _, name in ipairs(scope[3]) do
    local limit, figure = lim(name), used(name)
    if limit > 0 and figure >= share * limit then
      put('warned', 1)
      warned[#warned + 1] = i .. ':' .. name .. ':' .. string.format('%.17g', figure)
      return
    end
  end
end

-- The reply's status: 0 refused, 1 granted, then 'w' and the warnings reached ('1w2:max_cost_usd:160').
local function status(code, warned)
  if #warned == 0 then return code end
  return code .. 'w' .. table.concat(warned, ',')
end
"""
)
