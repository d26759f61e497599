"""Synthetic tenants for demos and benchmarks, generated as whole bitmaps with numpy.

Membership is Bernoulli per (team, user) with p = team_size / users, so each team has
`team_size` members on average and the generation is one vectorised draw per tenant
(no per-membership Python). Deterministic from `seed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from wsop.acl import bitmap
from wsop.acl.dataset import TenantData
from wsop.errors import UsageError


@dataclass(frozen=True)
class SyntheticSpec:
    tenants: int
    users: int
    teams: int
    team_size: int
    online: float
    seed: int = 0
    tenant_prefix: str = "t"
    team_prefix: str = "team-"

    def validate(self, max_users: int) -> None:
        if self.tenants <= 0:
            raise UsageError("--tenants must be at least 1")
        if self.users <= 0:
            raise UsageError("--users must be at least 1")
        if self.users > max_users:
            raise UsageError(
                f"--users {self.users} exceeds max_users {max_users} (raise --max-users)"
            )
        if self.teams <= 0:
            raise UsageError("--teams must be at least 1")
        if not 0 <= self.team_size <= self.users:
            raise UsageError(f"--team-size must be between 0 and --users ({self.users})")
        if not 0.0 <= self.online <= 1.0:
            raise UsageError("--online is a fraction between 0 and 1")
        # numpy's SeedSequence takes only non-negative entropy: refuse here, before
        # anything is written, rather than fail mid-seed with its ValueError
        if self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed}")

    def tenant_names(self) -> list[str]:
        return [f"{self.tenant_prefix}{i}" for i in range(self.tenants)]


def generate(spec: SyntheticSpec) -> Iterator[TenantData]:
    """One tenant at a time, so memory stays bounded by a single tenant's matrix."""
    p = spec.team_size / spec.users
    for index, tenant in enumerate(spec.tenant_names()):
        rng = np.random.default_rng([spec.seed, index])
        teams: dict[str, bytes] = {}
        memberships = 0
        # Row blocks bound the float32 scratch to ~64 MiB whatever the tenant size.
        block = max(1, (16 << 20) // spec.users)
        for start in range(0, spec.teams, block):
            rows = min(block, spec.teams - start)
            matrix = rng.random((rows, spec.users), dtype=np.float32) < p
            memberships += int(matrix.sum())
            for offset, data in enumerate(bitmap.encode_rows(matrix)):
                teams[f"{spec.team_prefix}{start + offset}"] = data
        online_mask = rng.random(spec.users, dtype=np.float32) < spec.online
        online = bitmap.encode(np.flatnonzero(online_mask))
        yield TenantData(
            tenant=tenant,
            teams=teams,
            online=online,
            memberships=memberships,
            online_count=int(online_mask.sum()),
        )
