"""Seeding: stage each tenant's bitmaps into expiring keys, then swap them in atomically.

One SET per bitmap (never one SETBIT per membership). A failure or interruption before
a tenant's swap leaves that tenant's previous data intact; its stage keys expire.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from wsop.acl import bitmap
from wsop.acl.csvload import ParsedTenant
from wsop.acl.dataset import TenantData
from wsop.acl.store import TenantStore
from wsop.errors import UsageError
from wsop.names import IdMode


@dataclass
class SeedResult:
    tenants: int = 0
    teams: int = 0
    memberships: int = 0
    online: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def _check_mode(store: TenantStore, data: TenantData) -> None:
    meta = store.tenant_meta(data.tenant)
    if meta and meta.get("ids", "int") != data.id_mode.value:
        raise UsageError(
            f"tenant {data.tenant!r} uses {meta.get('ids')} user ids; "
            f"this seed has {data.id_mode.value} ids (drop the tenant first or match the mode)"
        )


def apply_tenant(store: TenantStore, data: TenantData, replace: bool) -> int:
    """Stage then swap one tenant; returns its new data version."""
    _check_mode(store, data)
    nonce = uuid.uuid4().hex[:12]
    payload = {f"team:{name}": bits for name, bits in data.teams.items()}
    if data.online is not None:
        payload["online"] = data.online
    staged = store.stage(data.tenant, payload, nonce)
    try:
        teams = {name: staged[f"team:{name}"] for name in data.teams}
        return store.swap(
            data.tenant, teams, staged.get("online"), data.id_mode, replace, time.time()
        )
    except BaseException:
        store.discard(staged.values())
        raise


def seed(
    store: TenantStore,
    tenants: Iterable[TenantData],
    replace: bool,
    on_tenant: Callable[[TenantData], None] | None = None,
) -> SeedResult:
    started = time.perf_counter()
    result = SeedResult()
    for data in tenants:
        apply_tenant(store, data, replace)
        result.tenants += 1
        result.teams += len(data.teams)
        result.memberships += data.memberships
        result.online += data.online_count
        result.bytes += data.bytes
        if on_tenant:
            on_tenant(data)
    result.seconds = time.perf_counter() - started
    return result


def from_parsed(
    store: TenantStore, tenant: str, parsed: ParsedTenant, string_ids: bool, max_users: int
) -> TenantData:
    """Bitmaps for CSV rows; string ids go through the tenant's directory first."""

    def indices(ids: list) -> np.ndarray:
        if string_ids:
            mapped = store.indices_for(tenant, [str(i) for i in ids], max_users, assign=True)
            return np.asarray(mapped, dtype=np.int64)
        return np.asarray(ids, dtype=np.int64)

    teams: dict[str, bytes] = {}
    memberships = 0
    for team, ids in parsed.teams.items():
        arr = np.unique(indices(ids))
        memberships += int(arr.size)
        teams[team] = bitmap.encode(arr)
    online: bytes | None = None
    online_count = 0
    if parsed.online is not None:
        arr = np.unique(indices(parsed.online))
        online_count = int(arr.size)
        online = bitmap.encode(arr)
    return TenantData(
        tenant=tenant,
        teams=teams,
        online=online,
        memberships=memberships,
        online_count=online_count,
        id_mode=IdMode.STRING if string_ids else IdMode.INT,
    )
