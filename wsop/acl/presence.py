"""Presence in `online-users:{T}`, by hand and for reading: `wsop online add|remove`
flip bits, `wsop online list|count` and `GET /presence` read them.

The sidecars keep a per-user connection count and only set a bit on the first open and
clear it on the last close (multi-tab); `set_online` just flips the bits and says how
many actually changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from wsop.acl import bitmap, keys
from wsop.acl.store import TenantStore
from wsop.backend import RedisClient
from wsop.errors import UsageError
from wsop.names import IdMode, check_string_id, parse_int_id

UserId = int | str


@dataclass
class OnlineResult:
    tenant: str
    changed: int
    requested: int

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def set_online(
    store: TenantStore, tenant: str, users: Sequence[str], online: bool, max_users: int
) -> OnlineResult:
    keys.check_tenant(tenant)
    if not users:
        raise UsageError("no user given")
    meta = store.require_tenant(tenant)
    if meta.get("ids", "int") == IdMode.STRING.value:
        names = [check_string_id(u) for u in users]
        indices = [i for i in store.indices_for(tenant, names, max_users, assign=online) if i >= 0]
    else:
        indices = [parse_int_id(u, max_users) for u in users]
    changed = store.set_online(tenant, sorted(set(indices)), online)
    return OnlineResult(tenant=tenant, changed=changed, requested=len(users))


def reset_presence(client, tenant: str) -> None:
    """Forget every sidecar's presence in `tenant` (tests and load-test set-up only:
    a live sidecar would be contradicted)."""
    holders_key = keys.presence_holders_key(tenant)
    client.delete(holders_key, *client.smembers(holders_key))


# -- reading presence: `GET /presence`, `wsop online list|count` ---------------------------


@dataclass(frozen=True, slots=True)
class UserPresence:
    """One user's presence: online (its bit in `online-users:{T}`), and its connections
    across the stack (the quotas' counts; None when online but not counted: a stack
    whose connection limits are 0 keeps no counts)."""

    user: UserId
    online: bool
    connections: int | None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def user_presence(
    users: Sequence[UserId], indices: Sequence[int | None], replies: Sequence[object]
) -> list[UserPresence]:
    """Decode PRESENCE_READ_LUA's flat reply (bit, count per known index, in order);
    a user without an index (a name never seen, an id out of range) is offline."""
    out: list[UserPresence] = []
    pairs = iter(replies)
    for user, index in zip(users, indices, strict=True):
        if index is None:
            out.append(UserPresence(user, False, 0))
            continue
        online, count = bool(int(next(pairs))), int(next(pairs))  # type: ignore[call-overload]
        out.append(UserPresence(user, online, (count or None) if online else 0))
    return out


def count_online(client: RedisClient, tenant: str) -> int:
    """Users of `tenant` online now: BITCOUNT, O(size of the bitmap) inside Redis."""
    keys.check_tenant(tenant)
    return int(client.bitcount(keys.online_key(tenant)))


@dataclass
class OnlineList:
    """The first `limit` online users of a tenant (in bit order), how many are online
    (`count`), and whether fewer were listed than that (`truncated`)."""

    tenant: str
    users: list[UserId]
    count: int
    truncated: bool

    def to_json(self) -> dict[str, object]:
        return asdict(self)


ONLINE_CHUNK_BYTES = 64 * 1024
"""Bitmap bytes read per GETRANGE (512K users): a huge tenant streams, never one 2 MiB+
reply, and a `--limit` stops the reading early."""


def list_online(
    store: TenantStore,
    tenant: str,
    limit: int,
    progress: Callable[[int, int], None] | None = None,
    chunk_bytes: int = ONLINE_CHUNK_BYTES,
) -> OnlineList:
    """Online users of `tenant`, read from `online-users:{T}` chunk by chunk, up to
    `limit` (0: all); `progress(bytes read, bytes in all)` after each chunk. String-id
    tenants get their names back (through the directory). The bitmap moves while it is
    read: users who come and go meanwhile may or may not be listed."""
    keys.check_tenant(tenant)
    if limit < 0:
        raise UsageError("--limit must be >= 0 (0: no limit)")
    client, key = store.client, keys.online_key(tenant)
    count = int(client.bitcount(key))
    size = int(client.strlen(key))
    found: list[int] = []
    offset = 0
    while offset < size and not (limit and len(found) >= limit):
        chunk = client.getrange(key, offset, offset + chunk_bytes - 1)
        found.extend((bitmap.decode(chunk) + offset * 8).tolist())
        offset += chunk_bytes
        if progress is not None:
            progress(min(offset, size), size)
    found = found[:limit] if limit else found
    meta = store.tenant_meta(tenant) or {}
    users: list[UserId] = list(found)
    if meta.get("ids") == IdMode.STRING.value:
        users = list(store.names_for(tenant, found))
    return OnlineList(tenant, users, count, truncated=len(users) < count)
