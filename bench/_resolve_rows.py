"""The three ways bench/resolve.py computes a team message's recipients — the seed
post's Lua script, Redis SETs, wsop's bitmaps — and the test tenants they run on."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from wsop.acl import bitmap, keys
from wsop.acl.dataset import TenantData
from wsop.acl.resolve import resolve
from wsop.acl.seed import apply_tenant
from wsop.acl.store import TenantStore

TEAMS = ["team-0", "team-1", "team-2"]
"""The three teams every row resolves (OR), then AND online."""
TEAM_DENSITY = 0.01
ONLINE_FRACTION = 0.2

Resolver = Callable[[], list[int]]


# The seed post's script. Changes, and only these: `..` instead of `+` (Lua has no
# string `+`), the wsop key layout for online (`online-users:{T}`), temp keys that are
# per call (ARGV[2] nonce) and tagged with the tenant, and the second temp key is
# deleted too (per-call keys would otherwise leak). The GETBIT loop is kept as is.
SEED_POST_LUA = """
local tenantId = ARGV[1]
local tmp_or_key = 'tmp:{' .. tenantId .. '}:teams:' .. ARGV[2]
local notify_key = 'tmp:{' .. tenantId .. '}:notification:' .. ARGV[2]
local online_key = 'online-users:{' .. tenantId .. '}'

redis.call('BITOP', 'OR', tmp_or_key, unpack(KEYS))
redis.call('BITOP', 'AND', notify_key, tmp_or_key, online_key)

local max_index = redis.call('STRLEN', notify_key) * 8
local notified_users = {}
for i = 0, max_index - 1 do
  local bit = redis.call('GETBIT', notify_key, i)
  if bit == 1 then
    table.insert(notified_users, i)
  end
end

redis.call('DEL', tmp_or_key, notify_key)
return notified_users
"""

# -- data --------------------------------------------------------------------------------


def set_key(tenant: str, team: str) -> str:
    """Row (b) keeps its sets in the tenant's slot, like the bitmaps."""
    return f"sets:{{{tenant}}}:team:{team}"


def set_online_key(tenant: str) -> str:
    return f"sets:{{{tenant}}}:online"


def sadd_chunked(client: redis.Redis, items: Iterable[tuple[str, np.ndarray]]) -> None:
    """SADD in 10K-member commands, flushed every ~200K members: bounded buffers, few trips."""
    pipe = client.pipeline(transaction=False)
    pending = 0
    for key, ids in items:
        for start in range(0, ids.size, 10_000):
            chunk = ids[start : start + 10_000].tolist()
            pipe.sadd(key, *chunk)
            pending += len(chunk)
            if pending >= 200_000:
                pipe.execute()
                pending = 0
    pipe.execute()


@dataclass
class Tenant:
    """One benchmark tenant: its name, ids per team, online ids and the expected answer."""

    name: str
    users: int
    teams: dict[str, np.ndarray]
    online: np.ndarray
    expected: list[int]


def make_tenant(users: int, seed_value: int) -> Tenant:
    """3 teams of 1% density and 20% online, drawn independently per user."""
    rng = np.random.default_rng(seed_value)
    teams = {t: np.flatnonzero(rng.random(users, dtype=np.float32) < TEAM_DENSITY) for t in TEAMS}
    online = np.flatnonzero(rng.random(users, dtype=np.float32) < ONLINE_FRACTION)
    union = np.unique(np.concatenate(list(teams.values())))
    expected = np.intersect1d(union, online, assume_unique=True).tolist()
    return Tenant(f"bench-{users}", users, teams, online, expected)


def load_tenant(client: redis.Redis, store: TenantStore, tenant: Tenant) -> None:
    """Bitmaps through wsop's own seeding; the same ids as SETs for row (b)."""
    data = TenantData(
        tenant=tenant.name,
        teams={t: bitmap.encode(ids) for t, ids in tenant.teams.items()},
        online=bitmap.encode(tenant.online),
        memberships=sum(int(ids.size) for ids in tenant.teams.values()),
        online_count=int(tenant.online.size),
    )
    apply_tenant(store, data, replace=True)
    client.delete(*[set_key(tenant.name, t) for t in TEAMS], set_online_key(tenant.name))
    items = [(set_key(tenant.name, t), ids) for t, ids in tenant.teams.items()]
    sadd_chunked(client, [*items, (set_online_key(tenant.name), tenant.online)])


# -- the three contenders ----------------------------------------------------------------


def make_lua_row(client: redis.Redis, tenant: str) -> Resolver:
    script = client.register_script(SEED_POST_LUA)
    team_keys = [keys.team_key(tenant, t) for t in TEAMS]

    def run() -> list[int]:
        return script(keys=team_keys, args=[tenant, uuid.uuid4().hex])

    return run


def make_sets_row(client: redis.Redis, tenant: str) -> Resolver:
    team_keys = [set_key(tenant, t) for t in TEAMS]

    def run() -> list[int]:
        tmp = keys.temp_key(tenant, "sets")
        pipe = client.pipeline(transaction=False)
        pipe.sunionstore(tmp, team_keys)
        pipe.sinter(tmp, set_online_key(tenant))
        pipe.delete(tmp)
        _, members, _ = pipe.execute()
        return [int(m) for m in members]

    return run


def make_wsop_row(client: redis.Redis, tenant: str) -> Resolver:
    store = TenantStore(client)

    def run() -> list[int]:
        return resolve(store, tenant, TEAMS).recipients

    return run


def server_ms_per_call(client: redis.Redis, commands: Sequence[str], calls: int) -> float:
    """Server-side time per call from INFO commandstats (reset before the timed loop).

    Commands run inside a script are counted both on their own and in EVALSHA, so a
    script row must name only `evalsha`.
    """
    stats = client.info("commandstats")
    usec = sum(float(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in commands)
    return usec / 1000 / max(calls, 1)
