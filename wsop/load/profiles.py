"""Named load profiles as tables of stages, resolved with the user's overrides into a plan.

A profile is a rate shape, not a user shape: connections are opened once (the connect
phase) and stay open, and each stage sets the total message rate they share. Changing
the number of connections mid-run would turn every ramp-down into "loss" (a message in
flight to a user that is leaving); varying the rate over a fixed population measures
what we want, the stack's throughput and loss.

Pure: the CLI validates with it and the locust master runs the same plan (it travels
as JSON in `--wsop-config`), so both sides agree on every number.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from wsop.errors import UsageError

# One connection sends this many msg/s unless --connections says otherwise: 30K msg/s
# becomes 3,000 connections, a realistic chat-like pace per user (one message / 100 ms).
PER_CONNECTION_RATE = 10.0
# Users per synthetic tenant: small enough that the generator can hold every tenant's
# team membership in memory, large enough that team messages fan out to several users.
USERS_PER_TENANT = 100
TEAMS_PER_TENANT = 20
TEAM_SIZE = 5
GRACE_S = 3.0


@dataclass(frozen=True)
class Profile:
    """A named shape: (fraction of the duration, fraction of the peak rate) per stage."""

    name: str
    rate: float
    duration: float
    stages: tuple[tuple[float, float], ...]
    description: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("smoke", 200, 30, ((1.0, 1.0),), "~30 s at 200 msg/s over 20 connections"),
        Profile(
            "ramp",
            5000,
            100,
            ((0.2, 0.2), (0.2, 0.4), (0.2, 0.6), (0.2, 0.8), (0.2, 1.0)),
            "five equal steps up to the target rate",
        ),
        Profile("30k", 30000, 60, ((1.0, 1.0),), "steady 30,000 msg/s over 3,000 connections"),
        Profile(
            "spike",
            5000,
            60,
            ((0.4, 0.2), (0.2, 1.0), (0.4, 0.2)),
            "20% of the target, a burst at 100%, back to 20%",
        ),
        Profile("soak", 2000, 1800, ((1.0, 1.0),), "30 minutes steady at 2,000 msg/s"),
    )
}


def profile_names() -> str:
    return ", ".join(PROFILES)


@dataclass(frozen=True)
class Stage:
    seconds: float
    rate: float  # total msg/s across every connection of every worker


@dataclass(frozen=True)
class LoadPlan:
    """Everything a run needs, on the CLI, the master and every worker alike."""

    profile: str
    rate: float
    connections: int
    stages: tuple[Stage, ...]
    team_share: float = 0.2
    workers: int = 1
    grace_s: float = GRACE_S
    spawn_rate: float = 100.0
    tenants_per_worker: int = 1
    users_per_tenant: int = 2
    teams: int = TEAMS_PER_TENANT
    team_size: int = TEAM_SIZE
    seed: int = 7
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def planned_messages(self) -> float:
        return sum(s.seconds * s.rate for s in self.stages)

    @property
    def tenants(self) -> int:
        return self.tenants_per_worker * self.workers

    def tenant_names(self) -> list[str]:
        return [f"t{i}" for i in range(self.tenants)]

    def seed_command(self) -> str:
        """The `wsop seed synthetic` line that prepares a remote stack for this plan."""
        return (
            f"wsop seed synthetic --tenants {self.tenants} --users {self.users_per_tenant} "
            f"--teams {self.teams} --team-size {self.team_size} --online 0 "
            f"--seed {self.seed} --replace"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> LoadPlan:
        data = json.loads(raw)
        data["stages"] = tuple(Stage(**s) for s in data["stages"])
        return cls(**data)


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{name} must be a positive number, got {value}")


def make_plan(
    profile: str = "smoke",
    rate: float | None = None,
    connections: int | None = None,
    duration: float | None = None,
    team_share: float | None = None,
    workers: int = 1,
    grace_s: float = GRACE_S,
) -> LoadPlan:
    """Resolve a profile and the overrides; UsageError (exit 2) on anything unusable.

    --rate scales every stage (it is the peak), --duration scales every stage's length,
    --connections fixes the population (else peak rate / 10 msg/s per connection).
    """
    chosen = PROFILES.get(profile)
    if chosen is None:
        raise UsageError(f"unknown profile {profile!r}; valid profiles: {profile_names()}")
    _positive("--rate", rate)
    _positive("--duration", duration)
    _positive("--grace", grace_s)
    if connections is not None and connections < 1:
        raise UsageError(f"--connections must be at least 1, got {connections}")
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if team_share is not None and not 0.0 <= team_share <= 1.0:
        raise UsageError(f"--team-share is a fraction between 0 and 1, got {team_share}")
    peak = float(rate if rate is not None else chosen.rate)
    total = float(duration if duration is not None else chosen.duration)
    conns = connections or max(2, math.ceil(peak / PER_CONNECTION_RATE))
    if conns < workers:
        raise UsageError(f"--connections {conns} is fewer than --workers {workers}")
    stages = tuple(Stage(round(total * t, 3), round(peak * r, 3)) for t, r in chosen.stages)
    per_worker = math.ceil(conns / workers)
    tenants_per_worker = max(1, math.ceil(per_worker / USERS_PER_TENANT))
    # +1: locust may hand one worker a user more than the even split.
    users = math.ceil(per_worker / tenants_per_worker) + 1
    return LoadPlan(
        profile=profile,
        rate=peak,
        connections=conns,
        stages=stages,
        team_share=0.2 if team_share is None else team_share,
        workers=workers,
        grace_s=grace_s,
        spawn_rate=float(min(max(conns, 10), 200)),
        tenants_per_worker=tenants_per_worker,
        users_per_tenant=users,
        team_size=min(TEAM_SIZE, users),
    )
