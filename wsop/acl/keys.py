"""The Redis key layout, in one place.

Every key of a tenant carries the `{T}` hash tag, so all of them land in one Redis
Cluster slot: that is what makes multi-key BITOP, the swap script and per-call temp
keys valid on a cluster. Names are validated before they reach a key so that a
tenant or team name can never smuggle in a brace and move a key to another slot.
"""

from __future__ import annotations

import uuid

from wsop.errors import UsageError
from wsop.names import TEAM_RE, check_tenant

__all__ = ["check_team", "check_tenant"]  # check_tenant lives in wsop.names (quotas use it)


def check_team(team: str) -> str:
    if not isinstance(team, str) or not TEAM_RE.fullmatch(team):
        raise UsageError(
            f"invalid team name {team!r}: "
            "use 1-128 characters of letters, digits, '_', '.', ':', '-'"
        )
    return team


def team_key(tenant: str, team: str) -> str:
    """Bit u set ⇔ user u may read `team` of `tenant`."""
    return f"teams:{{{tenant}}}:{team}"


def online_key(tenant: str) -> str:
    """Bit u set ⇔ user u has at least one live connection."""
    return f"online-users:{{{tenant}}}"


def meta_key(tenant: str) -> str:
    """Hash: id mode (int|string), data version, seeded_at. Its existence defines a known tenant."""
    return f"meta:{{{tenant}}}"


def team_index_key(tenant: str) -> str:
    """Set of the tenant's team names, so `--replace` knows what to drop without SCAN."""
    return f"team-index:{{{tenant}}}"


def directory_keys(tenant: str) -> tuple[str, str, str]:
    """String user id → bit index, bit index → string id, and the next free index."""
    return (
        f"users:{{{tenant}}}:to-index",
        f"users:{{{tenant}}}:to-name",
        f"users:{{{tenant}}}:next",
    )


def temp_key(tenant: str, purpose: str) -> str:
    """A per-call key in the tenant's slot: concurrent calls never share scratch space."""
    return f"tmp:{{{tenant}}}:{purpose}:{uuid.uuid4().hex}"


def presence_key(tenant: str, sidecar: str) -> str:
    """Bit u set ⇔ sidecar `sidecar` holds at least one connection of user u."""
    return f"presence:{{{tenant}}}:{sidecar}"


def presence_holders_key(tenant: str) -> str:
    """Set of the tenant's per-sidecar presence bitmaps (their OR is the online bitmap)."""
    return f"presence-holders:{{{tenant}}}"


def presence_tenants_key(sidecar: str) -> str:
    """Set of tenants a sidecar has presence in: what to release after it crashed.

    Deliberately untagged: it spans tenants (and so slots); it is only read at start-up.
    """
    return f"presence-tenants:{sidecar}"


# -- presence healing: leases, the data epoch, re-assertion (wsop/acl/leases.py) ----------
#
# One hash tag for all of them, so the heartbeat, the claim of a dead sidecar's lease and
# the readiness check are each one single-slot Lua script on a Redis Cluster too. No
# tenant shares the tag (a tenant name cannot contain ':').
PRESENCE_TAG = "{wsop:presence}"


def presence_epoch_key() -> str:
    """The data epoch: "<created ms>-<random>", re-created (SET NX) when a data loss lost it."""
    return f"{PRESENCE_TAG}:epoch"


def presence_leases_key() -> str:
    """Sorted set: sidecar name → lease expiry (Redis server time, ms)."""
    return f"{PRESENCE_TAG}:leases"


def presence_ready_key(epoch: str) -> str:
    """Set of the sidecars that asserted every connection they hold under `epoch`."""
    return f"{PRESENCE_TAG}:ready:{epoch}"


def presence_reap_key(sidecar: str) -> str:
    """Lock held (SET NX PX) by the sidecar that is releasing a dead `sidecar`'s presence."""
    return f"{PRESENCE_TAG}:reap:{sidecar}"


def recent_key(tenant: str, bucket: int) -> str:
    """Bit u set ⇔ user u went offline during time bucket `bucket` (a history window
    each): team messages are still routed to (and recorded for) users offline that
    recently, so that they can recover them when they reconnect."""
    return f"recent:{{{tenant}}}:{bucket}"


def history_key(tenant: str, user: object) -> str:
    """Stream of the messages recorded for one user (`--history redis`): entry IDs are
    the user's offsets, MAXLEN and a TTL bound it (wsop/sidecar/history_redis.py)."""
    return f"history:{{{tenant}}}:{user}"


def connections_key(tenant: str, sidecar: str) -> str:
    """Hash: user bit index -> connections `sidecar` holds, and "*" -> all (quotas)."""
    return f"conns:{{{tenant}}}:{sidecar}"


def connection_counts_key(tenant: str) -> str:
    """Set of the tenant's `connections_key` hashes (the sum is the tenant's count)."""
    return f"conn-counts:{{{tenant}}}"
