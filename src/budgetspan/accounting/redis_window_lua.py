"""The Lua of the scope windows on the hot path (part of ``redis_hot_lua``'s, which writes in
the ``$NAME`` places): all of a call's windows read with one MGET, each a string of its packed
figures (``redis_scripts.WINDOW``); a window an earlier budgetspan kept as a hash carried over by
the first call that finds it; the expiry a window's write sets; the warning threshold.
"""

from __future__ import annotations

from budgetspan.accounting.redis_scripts import MIRROR, WINDOW_FIGURES

#: A window's table (``W[i]``): after its figures, these.
WINDOW_PLACES = ("WKEY", "WL", "WWARNS", "WWARNED", "WEXISTS", "WCHANGED", "WTTL", "WBORN")

# A window's string as locals (its figures, then warned), and its figures as an array with the
# run's places (``MIRROR``; 0 where a window keeps nothing), so the rule's helpers serve both.
_WINDOW_LOCALS = ", ".join(f"w{i}" for i in range(1, len(WINDOW_FIGURES) + 1))
_WINDOW_TABLE = ", ".join(
    f"w{WINDOW_FIGURES.index(name) + 1}" if name in WINDOW_FIGURES else "0" for name in MIRROR
)
WINDOW_PACKED = ", ".join(f"f[{MIRROR.index(name) + 1}]" for name in WINDOW_FIGURES)


# A window an earlier budgetspan kept (before ``windows`` below, which calls it).
_EARLIER = """
-- A scope window MGET found no string for: none yet, or a hash an earlier budgetspan kept (its
-- figures packed in ``F`` and ``warned``, or older, one text field per figure). Its figures
-- carried over (the write's SET, KEEPTTL, replaces the hash and keeps its expiry): an upgrade
-- resets no tenant's spend. Returns its figures, whether it warned, whether it exists (its
-- birth: 0, before any call in flight now).
local function earlier(key)
  if redis.call('TYPE', key).ok ~= 'hash' then return {unpack(ZEROS)}, false, false end
  local got = redis.call('HMGET', key, 'F', 'warned')
  if got[1] then return {struct.unpack(FFMT, got[1])}, got[2] == '1', true end
  h = key
  local old, f = legacy(MIRROR), {}
  for j, name in ipairs(MIRROR) do f[j] = old[name] end
  return f, got[2] == '1', true
end
"""

# Scope windows in hand: W[i] (KEYS[i], i >= 2), one table each (a table costs ~2k instructions
# made and collected): its figures at the run's places (``MIRROR``), then at $WKEY on its key, its
# limits, whether it warns (a threshold set), whether it warned, whether it exists, whether it
# changed, and the ttl to set with its write.
_WINDOWS = (
    """
-- Read the scope windows (KEYS[2..]; each one argument from ARGV[wat]: its limits, warning
-- thresholds, flags and expiry packed, ``scopes.wire``): one MGET of their strings for all.
local function windows(wat)
  local n = #K
  local got = redis.call('MGET', unpack(K, 2, n))
  local W = {}
  for i = 2, n do
    local key, v, arg = K[i], got[i - 1], A[wat + i - 2]
    local l = UNPACKED[arg] or unpacked(WFMT, arg)
    if v then
      local """
    + _WINDOW_LOCALS
    + """, wd, wb = struct.unpack(WINFMT, v)
      W[i] = {"""
    + _WINDOW_TABLE
    + """, key, l, l[$NK * 2 + 1] == 1, wd == 1, true, false, nil, wb}
    else
      local w, warned, exists = earlier(key)
      w[$WKEY], w[$WL], w[$WWARNS], w[$WWARNED], w[$WEXISTS], w[$WCHANGED] = key, l, l[$NK * 2 + 1] == 1, warned, exists, exists
      w[$WBORN] = 0
      W[i] = w
    end
  end
  return W
end
"""
)

_WINDOW_REST = """
-- The ttl a window's write sets (its first call; each call of a scope without a window): to a
-- fixed window's end plus the grace (``now``: the process's scope clock), else the ttl it carries.
local function ttl_of(l, now)
  local e, t = l[$NK * 2 + 3], l[$NK * 2 + 4]
  if e ~= e then return t end
  local left = e - now
  if left >= 0 then left = math.floor(left) else left = -math.floor(-left) end
  left = left + t
  if left < 1 then return 1 end
  return left
end
-- The window's warning threshold (a share of any of its limits, ``scopes.wire``) reached for
-- the first time: noted in its value and in ``list`` as 'i:limit:used'.
local function warn_check(i, w, list)
  if not w[$WWARNS] or w[$WWARNED] then return end
  local f, l = w, w[$WL]
  local mc, tc, ti, to = f[$MC], f[$TC], f[$TI], f[$TO]
  if mc >= l[$NK + $LM] or tc >= l[$NK + $LT] or mc + tc >= l[$NK + $LS] or f[$RT] >= l[$NK + $LR]
    or f[$CO] >= l[$NK + $LC] or ti >= l[$NK + $LI] or to >= l[$NK + $LO] or ti + to >= l[$NK + $LX] then
    for k = 1, #WARN_PLACES do  -- which one, in the budget's order
      local j = WARN_PLACES[k]
      local figure = used_at(j, f)
      if figure >= l[$NK + j] then
        w[$WWARNED], w[$WCHANGED] = true, true
        list[#list + 1] = i .. ':' .. WARN_ORDER[k] .. ':' .. g(figure)
        return
      end
    end
  end
end
local function status(code, list)
  if #list == 0 then return code end
  return code .. 'w' .. table.concat(list, ',')
end
"""

#: The windows' helpers, in ``redis_hot_lua``'s prelude (after the rule's helpers).
WINDOWS_LUA = _EARLIER + _WINDOWS + _WINDOW_REST
