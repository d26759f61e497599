"""Lua scripts for the writes that must be atomic (seed swap, id directory, presence),
shared by the sync store (CLI, seeding) and the async one (sidecars).

Resolution is not here: it is a plain pipeline (`wsop.acl.pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass

from wsop.names import IdMode

# Atomically move staged bitmaps into place (the swap of stage-then-swap).
# KEYS: meta, team-index, online-dest, online-stage|'', then n stage keys, n dest keys,
#       then the keys to drop (--replace). ARGV: n, id mode, drop count, seeded_at, names...
SWAP_LUA = """
local n = tonumber(ARGV[1])
local ndrop = tonumber(ARGV[3])
for i = 1, n do
  if redis.call('EXISTS', KEYS[4 + i]) == 0 then
    return redis.error_reply('staged key vanished before the swap: ' .. KEYS[4 + i])
  end
end
for i = 1, ndrop do redis.call('DEL', KEYS[4 + 2 * n + i]) end
if ndrop > 0 then redis.call('DEL', KEYS[2]) end
for i = 1, n do
  redis.call('PERSIST', KEYS[4 + i])
  redis.call('RENAME', KEYS[4 + i], KEYS[4 + n + i])
  redis.call('SADD', KEYS[2], ARGV[4 + i])
end
if KEYS[4] ~= KEYS[3] then
  redis.call('PERSIST', KEYS[4])
  redis.call('RENAME', KEYS[4], KEYS[3])
end
redis.call('HSET', KEYS[1], 'ids', ARGV[2], 'seeded_at', ARGV[4])
return redis.call('HINCRBY', KEYS[1], 'version', 1)
"""

# Map string ids to dense bit indices, assigning new ones from a per-tenant counter.
# KEYS: to-index, to-name, next; ARGV: max_users, assign ('1'|'0'), names...
DIRECTORY_LUA = """
local max_users = tonumber(ARGV[1])
local out = {}
for i = 3, #ARGV do
  local idx = redis.call('HGET', KEYS[1], ARGV[i])
  if (not idx) and ARGV[2] == '1' then
    idx = redis.call('INCR', KEYS[3]) - 1
    if idx >= max_users then
      return redis.error_reply('directory full: max_users is ' .. max_users)
    end
    redis.call('HSET', KEYS[1], ARGV[i], idx)
    redis.call('HSET', KEYS[2], idx, ARGV[i])
  end
  out[#out + 1] = idx and tonumber(idx) or -1
end
return out
"""

# Presence across sidecars: each sidecar keeps its own bitmap of the users it holds a
# connection of (`presence:{T}:<sidecar>`); the online bit is the OR of them. A sidecar
# that crashes or misses a decrement can therefore always be cleaned up (RELEASE_LUA)
# without guessing counts. KEYS: online, mine, holders-set[, recent]; ARGV: bit index,
# +1 | -1[, recent ttl ms]. A user going offline is marked in the recent bitmap, when given.
PRESENCE_LUA = """
local idx = tonumber(ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('SETBIT', KEYS[2], idx, 1)
  redis.call('SADD', KEYS[3], KEYS[2])
  redis.call('SETBIT', KEYS[1], idx, 1)
  return 1
end
redis.call('SETBIT', KEYS[2], idx, 0)
for _, other in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if other ~= KEYS[2] and redis.call('GETBIT', other, idx) == 1 then return 1 end
end
redis.call('SETBIT', KEYS[1], idx, 0)
if KEYS[4] then
  redis.call('SETBIT', KEYS[4], idx, 1)
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
return 0
"""

# Drop one sidecar's presence in a tenant: clear the online bits only it was holding
# (KEYS 5 and 6, when given: its connection counts and the tenant's set of them).
# online &= NOT (mine AND NOT OR(others)); strings are padded before NOT so that bits
# past a shorter operand are kept, not cleared. KEYS: online, mine, holders, scratch[,
# conns, conn-counts[, recent]]; ARGV: [recent ttl ms]. The users it takes offline are
# marked in the recent bitmap, when given (they lost their connection just now).
RELEASE_LUA = """
redis.call('SREM', KEYS[3], KEYS[2])
if KEYS[5] then  -- and its connection counts (quotas): all of them go with it
  redis.call('DEL', KEYS[5])
  redis.call('SREM', KEYS[6], KEYS[5])
end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local function pad(key, n)
  if redis.call('STRLEN', key) < n then redis.call('SETRANGE', key, n - 1, '\\0') end
end
local n = math.max(redis.call('STRLEN', KEYS[1]), redis.call('STRLEN', KEYS[2]))
local others = redis.call('SMEMBERS', KEYS[3])
if #others > 0 then
  redis.call('BITOP', 'OR', KEYS[4], unpack(others))
  pad(KEYS[4], n)
  redis.call('BITOP', 'NOT', KEYS[4], KEYS[4])
  redis.call('BITOP', 'AND', KEYS[4], KEYS[4], KEYS[2])
else
  redis.call('BITOP', 'OR', KEYS[4], KEYS[2])
end
if KEYS[7] then
  redis.call('BITOP', 'OR', KEYS[7], KEYS[7], KEYS[4])
  redis.call('PEXPIRE', KEYS[7], ARGV[1])
end
pad(KEYS[4], n)
redis.call('BITOP', 'NOT', KEYS[4], KEYS[4])
redis.call('BITOP', 'AND', KEYS[1], KEYS[1], KEYS[4])
redis.call('DEL', KEYS[4], KEYS[2])
return 1
"""

# Re-assert many users' presence in one tenant at once (after Redis lost its data, or
# after this sidecar's presence was reaped while it was alive). Only ever sets bits: a
# user who left meanwhile is cleared again by the caller. KEYS: online, mine, holders;
# ARGV: bit indices.
ASSERT_LUA = """
for i = 1, #ARGV do
  local idx = tonumber(ARGV[i])
  redis.call('SETBIT', KEYS[2], idx, 1)
  redis.call('SETBIT', KEYS[1], idx, 1)
end
redis.call('SADD', KEYS[3], KEYS[2])
return #ARGV
"""

# The scripts below work on the `{wsop:presence}` keys (one slot) and read the clock of
# Redis itself (TIME), so leases never depend on the sidecars' clocks agreeing.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# One heartbeat: get-or-create the epoch, refresh our lease, say whether it had vanished
# (reaped, or data loss) and whether someone is reaping us right now, and list expired
# leases. Stays in the ready set of its epoch only while nothing was lost.
# KEYS: epoch, leases, ready(asserted epoch), own reap lock.
# ARGV: name, lease ms, fresh token, asserted epoch ('' before the first), ready ttl ms.
BEAT_LUA = (
    _NOW
    + """
local epoch = redis.call('GET', KEYS[1])
local created = 0
if not epoch then
  epoch = string.format('%d', now) .. '-' .. ARGV[3]
  redis.call('SET', KEYS[1], epoch)
  created = 1
end
local added = redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
if added == 0 and epoch == ARGV[4] then
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', now))
return {epoch, now, added, created, redis.call('EXISTS', KEYS[4]), expired}
"""
)

# Claim the right to release a dead sidecar: only while its lease is still expired, and
# only one reaper at a time (the lock; it expires if the reaper dies mid-way, and the
# lease stays expired until the release is finished, so another reaper takes over).
# KEYS: leases, the victim's reap lock; ARGV: victim, reaper, lock ms.
CLAIM_LUA = (
    _NOW
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) >= now then return 0 end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 0 end
return 1
"""
)

# The release is done: drop the lease (unless the "dead" sidecar came back and renewed
# it: it re-asserts once it sees the lock gone) and its ready mark, then the lock.
# KEYS: leases, the victim's reap lock, ready(current epoch); ARGV: victim, reaper.
FINISH_LUA = (
    _NOW
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) < now then redis.call('ZREM', KEYS[1], ARGV[1]) end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""
)

# What a sidecar waiting for the others after an epoch change needs, in one read.
# KEYS: leases, ready(epoch). Returns {now, {name, expiry, ...}, {ready names}}.
READY_LUA = (
    _NOW
    + """
return {now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), redis.call('SMEMBERS', KEYS[2])}
"""
)


@dataclass(frozen=True)
class RawResolution:
    """A resolution before decoding. `forbidden_team`: index of a team the sender is not in."""

    id_mode: IdMode
    team_exists: list[bool]
    bits: bytes
    forbidden_team: int | None = None


# Connection counts for the quotas: one hash per sidecar and tenant (`conns:{T}:<me>`,
# user bit index -> connections, "*" -> all), the tenant's set of them, so a crashed
# sidecar's counts go with its presence (RELEASE_LUA). +1 admits (or refuses, when a
# limit is reached across every sidecar and `enforce` is 1); -1 never goes below 0.
# KEYS: mine, holders; ARGV: index, +1|-1, per-user limit, per-tenant limit, enforce.
# Returns {1} admitted/done, or {0, 'user'|'tenant', count}.
CONNECTIONS_LUA = """
local idx, delta = ARGV[1], tonumber(ARGV[2])
if delta < 0 then
  if redis.call('HINCRBY', KEYS[1], idx, -1) <= 0 then redis.call('HDEL', KEYS[1], idx) end
  if redis.call('HINCRBY', KEYS[1], '*', -1) <= 0 then
    redis.call('DEL', KEYS[1])
    redis.call('SREM', KEYS[2], KEYS[1])
  end
  return {1}
end
local per_user, per_tenant = tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[5] == '1' and (per_user > 0 or per_tenant > 0) then
  local counts = redis.call('SMEMBERS', KEYS[2])
  local mine = false
  for _, key in ipairs(counts) do mine = mine or key == KEYS[1] end
  if not mine then counts[#counts + 1] = KEYS[1] end
  local user_n, tenant_n = 0, 0
  for _, key in ipairs(counts) do
    local got = redis.call('HMGET', key, idx, '*')
    user_n = user_n + (tonumber(got[1]) or 0)
    tenant_n = tenant_n + (tonumber(got[2]) or 0)
  end
  if per_user > 0 and user_n >= per_user then return {0, 'user', user_n} end
  if per_tenant > 0 and tenant_n >= per_tenant then return {0, 'tenant', tenant_n} end
end
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('HINCRBY', KEYS[1], idx, 1)
redis.call('HINCRBY', KEYS[1], '*', 1)
return {1}
"""

# Who of these users is online, and on how many connections (`GET /presence`): the
# online bit, and the sum of the per-sidecar connection counts the quotas keep
# (`conns:{T}:<sidecar>`, listed in `conn-counts:{T}`: same slot, like CONNECTIONS_LUA).
# KEYS: online-users, conn-counts; ARGV: bit indices. Returns bit, count, bit, count, …
PRESENCE_READ_LUA = """
local out = {}
for i = 1, #ARGV do
  out[2 * i - 1] = redis.call('GETBIT', KEYS[1], ARGV[i])
  out[2 * i] = 0
end
for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local got = redis.call('HMGET', key, unpack(ARGV))
  for i = 1, #ARGV do out[2 * i] = out[2 * i] + (tonumber(got[i]) or 0) end
end
return out
"""
