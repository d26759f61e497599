"""The only module of `wsop.acl` that talks to Redis.

Each operation is one round trip where possible (a Lua script or a pipeline), because
at 30K messages/s the network round trip, not Redis's CPU, is the budget. All keys of
a call share the tenant's hash tag, so the same scripts run on a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis

from wsop.acl import keys
from wsop.acl.pipeline import parse_resolve, queue_resolve
from wsop.acl.scripts import DIRECTORY_LUA, SWAP_LUA, RawResolution
from wsop.backend import RedisClient
from wsop.errors import BackendError, NotFound
from wsop.names import IdMode

STAGE_TTL_S = 3600


class TenantStore:
    """Bitmap operations for one Redis (standalone or cluster)."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._swap = client.register_script(SWAP_LUA)
        self._directory = client.register_script(DIRECTORY_LUA)

    # -- reads -------------------------------------------------------------------------

    def tenant_meta(self, tenant: str) -> dict[str, str] | None:
        raw = self.client.hgetall(keys.meta_key(tenant))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    def require_tenant(self, tenant: str) -> dict[str, str]:
        meta = self.tenant_meta(tenant)
        if meta is None:
            raise NotFound(f"unknown tenant {tenant!r}: nothing seeded for it (see `wsop seed`)")
        return meta

    def team_names(self, tenant: str) -> list[str]:
        return sorted(m.decode() for m in self.client.smembers(keys.team_index_key(tenant)))

    def resolve_raw(self, tenant: str, teams: Sequence[str], online_only: bool) -> RawResolution:
        pipe = self.client.pipeline(transaction=False)
        queue_resolve(pipe, tenant, teams, online_only)
        try:
            replies = pipe.execute(raise_on_error=False)
            return parse_resolve(tenant, teams, replies)
        except redis.ResponseError as exc:
            involved = [keys.online_key(tenant), *(keys.team_key(tenant, t) for t in teams)]
            raise self._explain(exc, involved) from None

    def names_for(self, tenant: str, indices: Iterable[int]) -> list[str]:
        """String ids for bit indices (string-id tenants), in the given order."""
        idx = [int(i) for i in indices]
        if not idx:
            return []
        _, to_name, _ = keys.directory_keys(tenant)
        names: list[str] = []
        for start in range(0, len(idx), 10_000):
            chunk = idx[start : start + 10_000]
            for i, raw in zip(chunk, self.client.hmget(to_name, chunk), strict=True):
                names.append(raw.decode() if raw is not None else f"#{i}")
        return names

    def indices_for(
        self, tenant: str, names: Sequence[str], max_users: int, assign: bool
    ) -> list[int]:
        """Bit indices for string ids; -1 for unknown names when not assigning."""
        out: list[int] = []
        dir_keys = list(keys.directory_keys(tenant))
        for start in range(0, len(names), 5_000):
            chunk = list(names[start : start + 5_000])
            try:
                reply = self._directory(
                    keys=dir_keys, args=[max_users, "1" if assign else "0", *chunk]
                )
            except redis.ResponseError as exc:
                raise BackendError(f"tenant {tenant!r}: {exc}") from None
            out.extend(int(v) for v in reply)
        return out

    # -- writes ------------------------------------------------------------------------

    def stage(self, tenant: str, bitmaps: dict[str, bytes], nonce: str) -> dict[str, str]:
        """Write bitmaps to expiring stage keys; returns logical name → stage key.

        A crash after this point leaves only stage keys, which expire on their own;
        the live keys are untouched until `swap`.
        """
        staged: dict[str, str] = {}
        pipe = self.client.pipeline(transaction=False)
        pending = 0
        for name, data in bitmaps.items():
            key = f"stage:{{{tenant}}}:{nonce}:{name}"
            pipe.set(key, data, ex=STAGE_TTL_S)
            staged[name] = key
            pending += len(data)
            if pending > 8 << 20:
                pipe.execute()
                pending = 0
        pipe.execute()
        return staged

    def swap(
        self,
        tenant: str,
        staged_teams: dict[str, str],
        staged_online: str | None,
        id_mode: IdMode,
        replace: bool,
        seeded_at: float,
    ) -> int:
        """Rename staged keys over the live ones in one atomic script; returns the new version."""
        names = list(staged_teams)
        drop: list[str] = []
        if replace:
            keep = set(names)
            drop = [keys.team_key(tenant, t) for t in self.team_names(tenant) if t not in keep]
        online_dest = keys.online_key(tenant)
        script_keys = [
            keys.meta_key(tenant),
            keys.team_index_key(tenant),
            online_dest,
            staged_online or online_dest,
            *[staged_teams[n] for n in names],
            *[keys.team_key(tenant, n) for n in names],
            *drop,
        ]
        args = [len(names), id_mode.value, len(drop), repr(seeded_at), *names]
        try:
            return int(self._swap(keys=script_keys, args=args))
        except redis.ResponseError as exc:
            raise BackendError(f"seed of tenant {tenant!r} not applied: {exc}") from None

    def discard(self, staged_keys: Iterable[str]) -> None:
        key_list = list(staged_keys)
        if key_list:
            pipe = self.client.pipeline(transaction=False)
            for key in key_list:
                pipe.delete(key)
            pipe.execute()

    def set_online(self, tenant: str, indices: Sequence[int], online: bool) -> int:
        """SETBIT each user; returns how many bits actually flipped."""
        if not indices:
            return 0
        key = keys.online_key(tenant)
        pipe = self.client.pipeline(transaction=False)
        for i in indices:
            pipe.setbit(key, int(i), 1 if online else 0)
        try:
            previous = pipe.execute()
        except redis.ResponseError as exc:
            raise self._explain(exc, [key]) from None
        return sum(1 for old in previous if bool(old) != online)

    # -- errors ------------------------------------------------------------------------

    def _explain(self, exc: redis.ResponseError, involved: Sequence[str]) -> BackendError:
        """Turn a WRONGTYPE into a message that names the offending key."""
        if "WRONGTYPE" in str(exc):
            for key in involved:
                kind = self.client.type(key)
                kind = kind.decode() if isinstance(kind, bytes) else kind
                if kind not in ("string", "none"):
                    return BackendError(
                        f"key {key} holds a {kind}, not a bitmap string (WRONGTYPE); "
                        "delete it or fix whatever wrote it"
                    )
        return BackendError(f"Redis refused the operation: {exc}")
