"""The Redis ledger's Lua library: reserve and settle (``redis_scripts``), the operations that
open, read, cancel and extend a run, and all of them as one chunk of Lua (``CORE``), which
``redis_wire`` loads once as a Redis 7 function library (or sends as scripts to an older server).
"""

from __future__ import annotations

from budgetspan.accounting.redis_hot_lua import HOT_LUA, RESERVE_BODY, SETTLE_BODY, SETTLE_RESERVE_BODY
from budgetspan.accounting.redis_scripts import PRELUDE

# Open a run, or restore a lost one: create the hash from ARGV's fields if it does not exist (the
# first process to open a shared run sets its budget: figures and limits packed, the rest as text
# fields, the open count among them); otherwise add ARGV[2] to its open count, or (ARGV[2] '0': a
# restore over a hash another server kept, older than what the process knew: ``RedisLedger``)
# raise each figure and tool count to at least the pair's. ARGV: ttl seconds, openers to add, then field,
# value pairs. Reply: {created (1/0), started_at, the wall-clock limit, server time seconds,
# microseconds, mirror, the wall-clock time kept for the final answer}.
OPEN_BODY = """
local created = 0
if redis.call('EXISTS', h) == 0 then
  created = 1
  local t = redis.call('TIME')
  local limits = {}
  local changes = {'started_at', t[1] .. '.' .. string.format('%06d', t[2])}
  for i = 3, #ARGV, 2 do
    local name, value = ARGV[i], ARGV[i + 1]
    if FIG[name] then
      s[name] = tonumber(value)
    elseif LIM[name] then
      limits[LIM[name]] = tonumber(value)
    else
      changes[#changes + 1] = name
      changes[#changes + 1] = value
    end
  end
  for _, name in ipairs(MIRROR) do s[name] = s[name] or 0 end
  for i = 1, #LIMS do limits[i] = limits[i] or NAN end
  changes[#changes + 1] = 'L'
  changes[#changes + 1] = struct.pack(LFMT, unpack(limits, 1, #LIMS))
  s['?c'], s['?d'] = changes, true
  write()
elseif ARGV[2] ~= '0' then
  redis.call('HINCRBY', h, 'opened', ARGV[2])
else
  local tools = {}
  for i = 3, #ARGV, 2 do
    if string.sub(ARGV[i], 1, 5) == 'tool:' then tools[#tools + 1] = ARGV[i] end
  end
  if read(tools) then
    for i = 3, #ARGV, 2 do
      local name, value = ARGV[i], tonumber(ARGV[i + 1])
      if value and (FIG[name] or string.sub(name, 1, 5) == 'tool:') and value > (s[name] or 0) then
        put(name, value)
      end
    end
    write()
  end
end
expire_at_least(h, ARGV[1])
s = {}
read({})
local t = redis.call('TIME')
local wall, keep = lim('max_wall_clock_s'), s['keep:max_wall_clock_s']
return {created, s['?started_at'], wall and fmt(wall) or false, t[1], t[2], mirror(''),
  keep and keep == keep and fmt(keep) or false}
"""

# Mark the run cancelled. ARGV: ttl seconds. Reply as RESERVE's.
CANCEL_BODY = """
if not read({}) then return -1 end
put('cancelled', 1)
write()
expire_at_least(h, ARGV[1])
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

# A scope window: {1, its string} ({2, its fields} for a hash an earlier budgetspan kept), or -1.
WINDOW_BODY = """
local t = redis.call('TYPE', h).ok
if t == 'string' then return {1, redis.call('GET', h)} end
if t == 'hash' then return {2, redis.call('HGETALL', h)} end
return -1
"""

# Raise the run's limits (a limit that is not set stays unset): ``Ledger.extend``.
# ARGV: ttl seconds, then limit name, amount pairs. Reply as RESERVE's.
EXTEND_BODY = """
if not read({}) then return -1 end
for i = 2, #ARGV, 2 do
  local field = 'limit:' .. ARGV[i]
  if s[field] then s[field] = s[field] + tonumber(ARGV[i + 1]) end
end
local limits = {}
for i, name in ipairs(LIMS) do limits[i] = s[name] or NAN end
redis.call('HSET', h, 'L', struct.pack(LFMT, unpack(limits, 1, #LIMS)))
expire_at_least(h, ARGV[1])
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
    "window": WINDOW_BODY,
    "extend": EXTEND_BODY,
}

#: The helpers and every operation, as one chunk of Lua: loaded once as a Redis 7 function library
#: (``redis_wire``), or, on an older server, sent as a script ending with the operation's call.
CORE = (
    PRELUDE
    + HOT_LUA
    + "".join(f"local function op_{name}(KEYS, ARGV)\n{body}\nend\n" for name, body in BODIES.items())
)
