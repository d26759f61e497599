"""The asyncio ACL adapter the sidecars use on the live message path.

Same keys and the same Lua as the CLI's `TenantStore`, but asynchronous and with the
per-tenant facts that never change between messages (the id mode) cached, so a team
message costs one Redis round trip: authorise + resolve in one pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from wsop.acl import bitmap, keys
from wsop.acl.batch import PipelineBatch
from wsop.acl.pipeline import parse_resolve, queue_resolve
from wsop.acl.presence import UserPresence, user_presence
from wsop.acl.scripts import (
    ASSERT_LUA,
    CONNECTIONS_LUA,
    DIRECTORY_LUA,
    PRESENCE_LUA,
    PRESENCE_READ_LUA,
    RELEASE_LUA,
)
from wsop.errors import BackendError, NotFound
from wsop.names import IdMode, default_max_users

UserId = int | str
MODE_TTL_S = 5.0
ASSERT_CHUNK = 5_000
"""Bit indices per ASSERT_LUA call: bounds how long one script blocks Redis."""


@dataclass
class TeamResolution:
    """A team message's recipients, and the presence epoch read in the same round trip."""

    users: list[UserId] | None
    forbidden: str | None
    epoch: str | None
    not_found: NotFound | None = None

    def result(self) -> tuple[list[UserId] | None, str | None]:
        if self.not_found is not None:
            raise self.not_found
        return self.users, self.forbidden


def _epoch(pipe: Any) -> None:
    pipe.get(keys.presence_epoch_key())


class LiveAcl:
    def __init__(self, client, max_users: int | None = None) -> None:
        self.client = client
        self.max_users = max_users or default_max_users()
        self._presence = client.register_script(PRESENCE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._connections = client.register_script(CONNECTIONS_LUA)
        self._presence_tenants: set[tuple[str, str]] = set()
        self._directory = client.register_script(DIRECTORY_LUA)
        self._modes: dict[str, tuple[float, IdMode]] = {}
        self._resolutions = PipelineBatch(client, head=_epoch)
        """Team messages resolved in one pass share a pipeline, and its epoch read."""
        # Tenants seen with string ids: remembered even when Redis lost the tenant's meta,
        # so their connections can be re-asserted through the directory (`assert_held`).
        self.string_tenants: set[str] = set()
        self._assert = client.register_script(ASSERT_LUA)
        self._presence_read = client.register_script(PRESENCE_READ_LUA)
        self.recent_window_s: float | None = None
        """With a history (recovery): users who went offline less than this long ago
        still count as recipients of team messages (their owner records them)."""

    # -- users offline since lately (recovery) ------------------------------------------

    def _recent(self, tenant: str) -> list[str]:
        """The recent bitmaps that count as online: buckets of one window each, the
        current one (where a user going offline now is marked) and the two before it —
        at least two windows back, so a clock skew below a window between sidecars never
        drops a user who left less than a window ago."""
        window = self.recent_window_s
        assert window is not None
        bucket = int(time.time() // window)
        return [keys.recent_key(tenant, bucket - i) for i in range(3)]

    def _recent_ttl_ms(self) -> int:
        """A bucket outlives the last time it is read (three windows) by one window."""
        assert self.recent_window_s is not None
        return int(self.recent_window_s * 4 * 1000)

    async def readable(self, tenant: str, index: int, teams: Sequence[str]) -> dict[str, bool]:
        """Whether user `index` may read each team *now* (a replay re-checks access)."""
        if not teams:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for team in teams:
            pipe.getbit(keys.team_key(tenant, team), index)
        bits = await pipe.execute()
        return {team: bool(bit) for team, bit in zip(teams, bits, strict=True)}

    async def id_mode(self, tenant: str) -> IdMode:
        """The tenant's id mode; unknown tenants count as integer-id tenants, except those
        seen with string ids before (Redis lost their meta; the app seeds it again)."""
        cached = self._modes.get(tenant)
        now = time.monotonic()
        if cached and now - cached[0] < MODE_TTL_S:
            return cached[1]
        raw = await self.client.hget(keys.meta_key(tenant), "ids")
        if raw:
            mode = IdMode(raw.decode())
        else:  # unknown, or its meta was lost with Redis' data: a tenant never changes mode
            mode = IdMode.STRING if tenant in self.string_tenants else IdMode.INT
        self._modes[tenant] = (now, mode)
        if mode is IdMode.STRING:
            self.string_tenants.add(tenant)
        return mode

    async def bit_index(self, tenant: str, user: UserId) -> int | None:
        """The user's bit position, or None when it cannot have one (bad id for the tenant)."""
        if await self.id_mode(tenant) is IdMode.STRING:
            reply = await self._directory(
                keys=list(keys.directory_keys(tenant)), args=[self.max_users, "1", str(user)]
            )
            return int(reply[0])
        if isinstance(user, int) and 0 <= user < self.max_users:
            return user
        return None

    async def presence(self, sidecar: str, tenant: str, index: int, delta: int) -> None:
        """Record that `sidecar` now holds (+1) or no longer holds (-1) user `index`."""
        if delta > 0 and (sidecar, tenant) not in self._presence_tenants:
            await self.client.sadd(keys.presence_tenants_key(sidecar), tenant)
            self._presence_tenants.add((sidecar, tenant))
        script_keys = [
            keys.online_key(tenant),
            keys.presence_key(tenant, sidecar),
            keys.presence_holders_key(tenant),
        ]
        args: list[int] = [index, delta]
        if delta < 0 and self.recent_window_s is not None:
            script_keys.append(self._recent(tenant)[0])
            args.append(self._recent_ttl_ms())
        await self._presence(keys=script_keys, args=args)

    async def count_connection(
        self,
        sidecar: str,
        tenant: str,
        index: int,
        delta: int,
        per_user: int = 0,
        per_tenant: int = 0,
        enforce: bool = True,
    ) -> tuple[str, int] | None:
        """Count a connection `sidecar` takes (+1) or lost (-1) for the quotas; a +1 over
        a limit (across every sidecar) is refused: ('user' | 'tenant', count now)."""
        if delta > 0 and (sidecar, tenant) not in self._presence_tenants:
            # so that a crash's counts are released with its presence, tenant by tenant
            await self.client.sadd(keys.presence_tenants_key(sidecar), tenant)
            self._presence_tenants.add((sidecar, tenant))
        reply = await self._connections(
            keys=[keys.connections_key(tenant, sidecar), keys.connection_counts_key(tenant)],
            args=[index, delta, per_user, per_tenant, int(enforce)],
        )
        if int(reply[0]):
            return None
        what = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        return what, int(reply[2])

    async def release(self, sidecar: str) -> int:
        """Drop everything `sidecar` ever marked online (start-up after a crash, shutdown)."""
        tenants_key = keys.presence_tenants_key(sidecar)
        tenants = [t.decode() for t in await self.client.smembers(tenants_key)]
        for tenant in tenants:
            script_keys = [
                keys.online_key(tenant),
                keys.presence_key(tenant, sidecar),
                keys.presence_holders_key(tenant),
                keys.temp_key(tenant, "release"),
                keys.connections_key(tenant, sidecar),
                keys.connection_counts_key(tenant),
            ]
            args = []
            if self.recent_window_s is not None:  # its users just lost their connection
                script_keys.append(self._recent(tenant)[0])
                args.append(self._recent_ttl_ms())
            await self._release(keys=script_keys, args=args)
        await self.client.delete(tenants_key)
        self._presence_tenants = {p for p in self._presence_tenants if p[0] != sidecar}
        return len(tenants)

    async def team_recipients(
        self, tenant: str, teams: Sequence[str], sender_index: int | None
    ) -> tuple[list[UserId] | None, str | None]:
        """(online recipients, None), or (None, the first team the sender is not in);
        `sender_index` None (a backend's publish): nobody's membership is checked."""
        return (await self.resolve_team(tenant, teams, sender_index)).result()

    async def resolve_team(
        self, tenant: str, teams: Sequence[str], sender_index: int | None
    ) -> TeamResolution:
        """`team_recipients` plus the presence epoch, still in one pipeline.

        The epoch key is in another slot than the tenant's keys: on a cluster redis-py's
        pipeline sends each node its part concurrently, so this stays one round trip.
        An unknown tenant is returned (`not_found`), not raised, so the caller sees the
        epoch even then (a Redis that lost its data has lost the tenant's meta too).
        """
        recent = self._recent(tenant) if self.recent_window_s is not None else ()

        def queue(pipe: Any) -> None:
            queue_resolve(pipe, tenant, teams, True, sender=sender_index, recent=recent)

        (head,), replies = await self._resolutions.run(queue)
        epoch = head.decode() if isinstance(head, bytes) else None
        try:
            raw = parse_resolve(tenant, teams, replies, sender=sender_index)
        except NotFound as exc:
            return TeamResolution(None, None, epoch, not_found=exc)
        except redis.ResponseError as exc:
            raise BackendError(f"cannot resolve teams of {tenant!r}: {exc}") from None
        if raw.forbidden_team is not None:
            return TeamResolution(None, teams[raw.forbidden_team], epoch)
        indices = bitmap.decode_list(raw.bits)
        if raw.id_mode is IdMode.STRING:
            return TeamResolution(await self.names_for(tenant, indices), None, epoch)
        return TeamResolution(indices, None, epoch)

    # -- presence queries (`GET /presence`) --------------------------------------------

    async def presence_of(self, tenant: str, users: Sequence[UserId]) -> list[UserPresence]:
        """Who of `users` (canonical ids of the tenant's mode) is online, and on how many
        connections across the stack: one script, after a directory lookup for string
        ids (read-only: asking about a name never assigns it an index)."""
        if await self.id_mode(tenant) is IdMode.STRING:
            to_index = keys.directory_keys(tenant)[0]
            raw = await self.client.hmget(to_index, [str(u) for u in users])
            indices = [int(r) if r is not None else None for r in raw]
        else:
            indices = [u if isinstance(u, int) and 0 <= u < self.max_users else None for u in users]
        known = [i for i in indices if i is not None]
        replies = (
            await self._presence_read(
                keys=[keys.online_key(tenant), keys.connection_counts_key(tenant)], args=known
            )
            if known
            else []
        )
        return user_presence(users, indices, replies)

    async def online_count(self, tenant: str) -> int:
        """Users of `tenant` online now (BITCOUNT of its online bitmap)."""
        return int(await self.client.bitcount(keys.online_key(tenant)))

    # -- re-assertion (wsop/sidecar/presence.py) ----------------------------------------

    def forget_caches(self) -> None:
        """Redis lost its data (or our presence): what we remembered of it is void."""
        self._presence_tenants.clear()
        self._modes.clear()

    async def directory_indices(self, tenant: str, names: Sequence[str]) -> list[int]:
        """Bit indices of string ids, assigned when missing (a directory lost with the
        rest of the data is rebuilt by whoever maps a name first: us or the app's seed)."""
        out: list[int] = []
        dir_keys = list(keys.directory_keys(tenant))
        for start in range(0, len(names), ASSERT_CHUNK):
            chunk = list(names[start : start + ASSERT_CHUNK])
            reply = await self._directory(keys=dir_keys, args=[self.max_users, "1", *chunk])
            out.extend(int(v) for v in reply)
        return out

    async def assert_presence(self, sidecar: str, tenants: dict[str, Sequence[int]]) -> int:
        """Set `sidecar`'s presence of many users at once: one SADD for the tenant list,
        then a script per tenant (per 5,000 users), never a round trip per user."""
        if not tenants:
            return 0
        await self.client.sadd(keys.presence_tenants_key(sidecar), *tenants)
        total = 0
        for tenant, indices in tenants.items():
            self._presence_tenants.add((sidecar, tenant))
            ordered = sorted(set(indices))
            for start in range(0, len(ordered), ASSERT_CHUNK):
                total += await self._assert(
                    keys=[
                        keys.online_key(tenant),
                        keys.presence_key(tenant, sidecar),
                        keys.presence_holders_key(tenant),
                    ],
                    args=ordered[start : start + ASSERT_CHUNK],
                )
        return total

    async def names_for(self, tenant: str, indices: Sequence[int]) -> list[UserId]:
        if not indices:
            return []
        _, to_name, _ = keys.directory_keys(tenant)
        raw = await self.client.hmget(to_name, list(indices))
        return [r.decode() for r in raw if r is not None]

    async def close(self) -> None:
        await self.client.aclose()
