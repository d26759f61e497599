"""Who each load user is, and which teams it is in. Pure (numpy, no I/O).

Tenants are split between workers, never shared: worker k owns tenants
`t{k*Tw} … t{k*Tw+Tw-1}`. So every sender a user can hear from lives in the same
process, and that process can match each arrival to the message it sent, with no
cross-process bookkeeping. Users take slots in the order they start: slot n is user
`n // Tw` of the worker's tenant `n % Tw`.

Team membership is the one `wsop seed synthetic` wrote: the generator is deterministic
from its parameters, so the workers regenerate it instead of reading Redis (they may
run on machines that cannot reach Redis at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsop.acl import bitmap
from wsop.acl.synthetic import SyntheticSpec, generate
from wsop.errors import UsageError
from wsop.load.profiles import LoadPlan


@dataclass
class TenantTeams:
    tenant: str
    members: dict[str, frozenset[int]] = field(default_factory=dict)
    teams_of: dict[int, tuple[str, ...]] = field(default_factory=dict)


def synthetic_spec(plan: LoadPlan) -> SyntheticSpec:
    return SyntheticSpec(
        tenants=plan.tenants,
        users=plan.users_per_tenant,
        teams=plan.teams,
        team_size=plan.team_size,
        online=0.0,
        seed=plan.seed,
    )


def worker_tenants(plan: LoadPlan, worker_index: int) -> list[str]:
    if not 0 <= worker_index < plan.workers:
        raise UsageError(
            f"worker index {worker_index} is outside the plan's {plan.workers} workers "
            "(start the master with --workers matching the number of workers)"
        )
    first = worker_index * plan.tenants_per_worker
    return [f"t{first + j}" for j in range(plan.tenants_per_worker)]


def slot_identity(plan: LoadPlan, worker_index: int, slot: int) -> tuple[str, int]:
    """(tenant, user id) of the worker's `slot`-th user."""
    tenants = worker_tenants(plan, worker_index)
    tenant, user = tenants[slot % len(tenants)], slot // len(tenants)
    if user >= plan.users_per_tenant:
        raise UsageError(f"slot {slot} needs user {user} but tenants have {plan.users_per_tenant}")
    return tenant, user


def team_membership(plan: LoadPlan, tenants: list[str]) -> dict[str, TenantTeams]:
    """The seeded teams of `tenants`, as member sets and per-user team lists."""
    wanted = set(tenants)
    out: dict[str, TenantTeams] = {}
    for data in generate(synthetic_spec(plan)):
        if data.tenant not in wanted:
            continue
        layout = TenantTeams(data.tenant)
        teams_of: dict[int, list[str]] = {}
        for team, raw in data.teams.items():
            members = frozenset(int(u) for u in bitmap.decode(raw))
            layout.members[team] = members
            for user in members:
                teams_of.setdefault(user, []).append(team)
        layout.teams_of = {u: tuple(sorted(ts)) for u, ts in teams_of.items()}
        out[data.tenant] = layout
    return out
