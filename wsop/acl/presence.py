"""Marking users online or offline in `online-users:{T}` (the CLI's `wsop online`).

The sidecars keep a per-user connection count and only call this on the first open
and the last close (multi-tab); this module just flips the bits and says how many
actually changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from wsop.acl import keys
from wsop.acl.store import TenantStore
from wsop.errors import UsageError
from wsop.names import IdMode, check_string_id, parse_int_id


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
