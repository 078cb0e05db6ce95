"""Lua scripts (run with EVALSHA, reloaded on NOSCRIPT by redis-py's Script)."""

from __future__ import annotations

__all__ = ["GCRA", "QUEUE_CLAIM_EXPIRED", "QUEUE_EXTEND", "QUEUE_PRUNE_CONSUMERS", "QUEUE_REQUEUE"]

# GCRA over every rule, all or nothing (see supervisor.limits.gcra for the maths).
# KEYS: one bucket per rule.  ARGV[1]: now in µs, or '' for the server clock
# (TIME: one clock for every node, whatever their skew).  Then per rule:
# interval µs (1e6/rate), burst, cost.  TATs are integer µs strings: Lua's
# tostring keeps only 14 significant digits, too few for µs since 1970.
# Returns {allowed 0|1, retry_after µs, 1-based index of the refusing rule}.  The caller clamps the
# interval (gcra.MAX_INTERVAL_S); the wait and the expiry are clamped here, so that an absurdly slow
# rate is metered as the in-memory limiter meters it instead of failing every call.
GCRA = r"""
local MAX = 4503599627370496  -- 2^52: an integer reply or a PX past it overflows (~142,000 years as ms)
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local n = #KEYS
local new_tats = {}
local lowered = {}  -- a stricter rule's debt, forgiven down to this rule's bound (gcra.py): stored even if refused
local worst, worst_i = 0, 0
for i = 1, n do
  local base = 1 + (i - 1) * 3
  local interval = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  if tat > now + burst * interval then
    tat = now + burst * interval
    lowered[i] = tat
  end
  local new_tat = tat + cost * interval
  local wait = (tat - now) + (cost - burst) * interval  -- not new_tat - burst*interval - now: rounding
  if wait > 0.5 then
    if wait > worst then worst, worst_i = wait, i end
  end
  new_tats[i] = new_tat
end
if worst_i > 0 then
  for i, tat in pairs(lowered) do
    local ttl_ms = math.floor((tat - now) / 1000) + 1
    if ttl_ms > MAX then ttl_ms = MAX end
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', ttl_ms)
  end
  if worst > MAX then worst = MAX end
  return {0, math.ceil(worst), worst_i}
end
for i = 1, n do
  local ttl_ms = math.floor((new_tats[i] - now) / 1000) + 1
  if ttl_ms > MAX then ttl_ms = MAX end
  redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', ttl_ms)
end
return {1, 0, 0}
"""

# Hand out the oldest delivery whose claim expired (idle > visibility), with its
# delivery count, in one round trip.  XAUTOCLAIM looks at only COUNT*10 pending
# entries per call, so follow its cursor through the whole pending list: an
# expired job behind many live ones must not be missed.
# KEYS[1] stream.  ARGV: group, consumer, min idle ms.  Returns {} or {id, flat fields, deliveries}.
QUEUE_CLAIM_EXPIRED = r"""
local cursor = '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', 1)
  cursor = r[1]
  local entry = r[2][1]
  if entry then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    local deliveries = 1
    if p[1] then deliveries = p[1][4] end
    return {entry[1], entry[2], deliveries}
  end
until cursor == '0-0'
return {}
"""

# The caller still holds the delivery iff prior attempts (field 'a') + delivery
# count == the attempts it was handed.  Returns the owning consumer and the fields.
_HOLDER = r"""
local function holder(key, group, id, attempts)
  local p = redis.call('XPENDING', key, group, id, id, 1)
  if not p[1] then return nil, nil end
  local e = redis.call('XRANGE', key, id, id)
  if not e[1] then return nil, nil end
  local f = e[1][2]
  local prior = 0
  for j = 1, #f, 2 do if f[j] == 'a' then prior = tonumber(f[j + 1]) end end
  if prior + p[1][4] ~= tonumber(attempts) then return nil, nil end
  return p[1][2], f
end
"""

# Reset the idle time (JUSTID: the delivery count stays) if the caller still holds it.
# KEYS[1] stream.  ARGV: group, id, attempts.  Returns 1 if extended.
QUEUE_EXTEND = _HOLDER + r"""
local owner = holder(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if not owner then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], owner, 0, ARGV[2], 'JUSTID')
return 1
"""

# Put the job back at the end, keeping its attempt count, if the caller still holds it.
# KEYS[1] stream.  ARGV: group, id, attempts.  Returns the new entry id or false.
QUEUE_REQUEUE = _HOLDER + r"""
local owner, f = holder(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if not owner then return false end
local t, r = '', ''
for j = 1, #f, 2 do
  if f[j] == 't' then t = f[j + 1] elseif f[j] == 'r' then r = f[j + 1] end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return redis.call('XADD', KEYS[1], '*', 't', t, 'r', r, 'a', ARGV[3])
"""

# Drop the group's consumers that hold nothing and have not touched the queue for ARGV[2] ms: each worker
# process is a consumer (hostname:pid) that Redis keeps after the process is gone. Atomic, so a consumer
# cannot claim a job between the check and the delete (DELCONSUMER drops what a consumer holds).
# KEYS[1] stream.  ARGV: group, min idle ms.  Returns how many were dropped.
QUEUE_PRUNE_CONSUMERS = r"""
local dropped = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for j = 1, #c, 2 do f[c[j]] = c[j + 1] end
  if tonumber(f['pending']) == 0 and tonumber(f['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    dropped = dropped + 1
  end
end
return dropped
"""
