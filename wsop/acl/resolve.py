"""resolve(T, teams) = (OR of the team bitmaps) AND online — one round trip, no GETBIT loop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from wsop.acl import bitmap, keys
from wsop.acl.store import TenantStore
from wsop.errors import UsageError
from wsop.names import IdMode

MAX_TEAMS_PER_CALL = 1024

UserId = int | str


@dataclass
class ResolveResult:
    """Who receives a message to `teams` of `tenant`; read by both `--json` and the table."""

    tenant: str
    teams: list[str]
    recipients: list[UserId]
    count: int
    elapsed_ms: float
    online_only: bool = True
    missing_teams: list[str] = field(default_factory=list)

    def to_json(self, include_recipients: bool = True) -> dict[str, object]:
        out: dict[str, object] = {
            "tenant": self.tenant,
            "teams": self.teams,
            "count": self.count,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "online_only": self.online_only,
            "missing_teams": self.missing_teams,
        }
        if include_recipients:
            out["recipients"] = self.recipients
        return out


def check_teams(teams: Sequence[str]) -> list[str]:
    """Validated, de-duplicated team names in first-seen order."""
    if not teams:
        raise UsageError("no team given: name at least one with --team")
    if len(teams) > MAX_TEAMS_PER_CALL:
        raise UsageError(f"too many teams in one call ({len(teams)} > {MAX_TEAMS_PER_CALL})")
    return list(dict.fromkeys(keys.check_team(t) for t in teams))


def resolve(
    store: TenantStore, tenant: str, teams: Sequence[str], online_only: bool = True
) -> ResolveResult:
    """Recipients of a message to `teams`; `online_only=False` gives every member (`--all`)."""
    keys.check_tenant(tenant)
    wanted = check_teams(teams)
    started = time.perf_counter()
    raw = store.resolve_raw(tenant, wanted, online_only)
    indices = bitmap.decode(raw.bits)
    recipients: list[UserId]
    if raw.id_mode is IdMode.STRING:
        recipients = sorted(store.names_for(tenant, indices.tolist()))
    else:
        recipients = indices.tolist()
    elapsed = (time.perf_counter() - started) * 1000
    missing = [t for t, ok in zip(wanted, raw.team_exists, strict=True) if not ok]
    return ResolveResult(
        tenant=tenant,
        teams=wanted,
        recipients=recipients,
        count=len(recipients),
        elapsed_ms=elapsed,
        online_only=online_only,
        missing_teams=missing,
    )
