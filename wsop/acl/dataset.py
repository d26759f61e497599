"""The in-memory form of what a seed writes: one tenant's bitmaps, built before any I/O.

Both seed sources (synthetic generation and CSV files) produce `TenantData`, so staging,
swapping and the summary are written once.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsop.names import IdMode


@dataclass
class TenantData:
    """Bitmaps of one tenant, ready to stage. `online` None means: leave presence alone."""

    tenant: str
    teams: dict[str, bytes]
    online: bytes | None
    memberships: int
    online_count: int
    id_mode: IdMode = IdMode.INT

    @property
    def bytes(self) -> int:
        return sum(len(b) for b in self.teams.values()) + len(self.online or b"")
