"""The rebalance planner: which connections to move where, computed without any I/O.

Input: the placement (algorithm + ready members), where every live connection sits
(`Holding(member, tenant, user, count)`, gathered from each sidecar's `/connections`),
ε and an optional move budget. Output: a `Plan` whose moves, applied, (a) put every
connection on its target member and (b) bring max/mean down to ≤ 1 + ε.

A key `(tenant, user)` gets exactly one *target*: its ring owner (`Placement.owner`,
what the load balancer routes new connections to) unless that owner would exceed its
bounded-loads capacity ⌈(1 + ε) · total / n⌉ (`BoundedLoads.capacities`, counted in
connections), in which case the key goes elsewhere. Targets are chosen to need as few
moves as possible, in passes (all deterministic: keys are visited in a canonical order
whatever order the input came in):

1. keys whose connections all sit on their owner claim it, smallest first (keeping the
   most keys in place means displacing the fewest);
2. the other keys claim their owner if it still has room;
3. keys left over stay where they are if that member is live and has room (zero moves);
4. the rest walk their preference order (`Placement.preference_of`) to the first member
   with room — bounded loads proper. If none has room (one user holding more than
   ε · mean connections), the key goes to the member it overloads least and
   `bound_met` says the bound could not be reached.

With room everywhere (a loose ε) the target of every key is its owner, so the plan is
exactly the connections not on their owner: the minimum for (a). With unit counts the
passes always find room, so after the full plan every member holds ≤ ⌈(1 + ε) · mean⌉.

A connection on a member outside the membership (a deleted or not-ready pod) always
moves. Members listed in `unavailable` (ready, but their admin endpoint failed) keep
their ring ownership but receive nothing: we do not know their load.

Moves are ranked — off gone members first, then off members above capacity, then onto
ring owners; within a class the biggest counts first — and then scheduled so that a
move into a member waits until moves out of it have made room. A `max_moves` budget
keeps the first moves of that order; `dropped` says how many waited.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wsop.errors import UsageError
from wsop.ring import BoundedLoads, Placement, build, encode_key
from wsop.ring.registry import BOUNDED, DEFAULT_EPSILON

GONE = "gone"
BALANCE = "balance"
OWNER = "owner"
_PRIORITY = {GONE: 0, BALANCE: 1, OWNER: 2}


@dataclass(frozen=True)
class Holding:
    """`count` live connections of `(tenant, user)` on `member` (one `/connections` row)."""

    member: str
    tenant: str
    user: str | int
    count: int = 1


@dataclass(frozen=True)
class Move:
    """Move every connection of `(tenant, user)` on `source` to `target`.

    `reason`: `gone` (the source left the membership), `balance` (the target is not the
    ring owner: the owner is full) or `owner` (onto the ring owner).
    """

    tenant: str
    user: str | int
    source: str
    target: str
    count: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "user": self.user,
            "from": self.source,
            "to": self.target,
            "count": self.count,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Plan:
    """The planner's answer; `moves` are in execution (priority) order."""

    algo: str
    epsilon: float
    members: tuple[str, ...]
    moves: tuple[Move, ...]
    loads_before: dict[str, int]
    loads_after: dict[str, int]
    capacity: int
    before: float
    after: float
    dropped: int = 0
    bound_met: bool = True
    targets: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    """`(tenant, str(user))` -> the member every connection of that key ends on."""

    @property
    def total(self) -> int:
        return sum(self.loads_before.values())

    def matrix(self) -> list[dict[str, Any]]:
        """from → to: how many moves and connections, sorted by source then target."""
        cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for move in self.moves:
            cell = cells[(move.source, move.target)]
            cell[0] += 1
            cell[1] += move.count
        return [
            {"from": src, "to": dst, "moves": n, "connections": c}
            for (src, dst), (n, c) in sorted(cells.items())
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "algo": self.algo,
            "epsilon": self.epsilon,
            "members": list(self.members),
            "connections": self.total,
            "capacity": self.capacity,
            "before": self.before,
            "after": self.after,
            "moves": len(self.moves),
            "dropped": self.dropped,
            "bound_met": self.bound_met,
            "loads_before": self.loads_before,
            "loads_after": self.loads_after,
            "matrix": self.matrix(),
            "plan": [m.to_json() for m in self.moves],
        }


def max_over_mean(loads: dict[str, int], members: int) -> float:
    """max load / (total / members), rounded to 6 places; 0.0 when nothing is connected.

    `loads` may include members outside the membership (connections on gone pods), which
    count in the max: that is exactly the imbalance a rebalance must remove.
    """
    total = sum(loads.values())
    if total == 0 or members == 0:
        return 0.0
    return round(max(loads.values()) / (total / members), 6)


def placement_for(algo: str, members: Iterable[str]) -> Placement:
    """The ring the load balancer builds; `bounded` is what the planner adds on top."""
    if algo == BOUNDED:
        raise UsageError(
            "rebalance always applies bounded loads on top of the ring: "
            "give the ring's own algorithm with --algo (e.g. maglev)"
        )
    placement = build(algo, list(members))
    assert isinstance(placement, Placement)
    return placement


def plan_rebalance(
    algo: str | Placement,
    members: Iterable[str],
    holdings: Iterable[Holding],
    epsilon: float = DEFAULT_EPSILON,
    max_moves: int | None = None,
    unavailable: Collection[str] = (),
) -> Plan:
    """Plan the fewest moves that put every connection on its bounded-loads target."""
    member_list = list(members)
    if isinstance(algo, Placement):
        placement = algo
        if set(placement.members) != set(member_list):
            raise UsageError("the placement was built for other members")
    else:
        placement = placement_for(algo, member_list)
    if max_moves is not None and max_moves < 0:
        raise UsageError(f"--max-moves must be ≥ 0, got {max_moves}")
    live = placement.members
    active = {m for m in live if m not in set(unavailable)}
    if not active:
        raise UsageError("no member can receive connections (all are unavailable)")

    where, names = _aggregate(holdings)
    order = sorted(where)
    size = {k: sum(where[k].values()) for k in order}
    total = sum(size.values())
    caps = BoundedLoads(placement, epsilon).capacities(total)
    owner = dict(zip(order, placement.names(placement.indices(order)), strict=True))
    targets = _assign(placement, order, where, size, owner, caps, active)

    moves = []
    for k in order:
        tenant, user = names[k]
        for source, count in sorted(where[k].items()):
            if source == targets[k]:
                continue
            reason = GONE if source not in live else OWNER if targets[k] == owner[k] else BALANCE
            moves.append(Move(tenant, user, source, targets[k], count, reason))

    before = _loads(where, live)
    overloaded = {m for m, load in before.items() if m in active and load > caps[m]}
    moves.sort(key=lambda mv: _rank(mv, overloaded, before))
    moves = _schedule(moves, before, caps)
    dropped = 0
    if max_moves is not None and len(moves) > max_moves:
        dropped = len(moves) - max_moves
        moves = moves[:max_moves]
    after = dict(before)
    for mv in moves:
        after[mv.source] -= mv.count
        after[mv.target] += mv.count
    after = {m: load for m, load in after.items() if load or m in live}
    bound_met = dropped == 0 and all(
        load <= caps[m] if m in active else load == 0 for m, load in after.items()
    )
    return Plan(
        algo=placement.name,
        epsilon=float(epsilon),
        members=tuple(live),
        moves=tuple(moves),
        loads_before=before,
        loads_after=after,
        capacity=max(caps.values()),
        before=max_over_mean(before, len(live)),
        after=max_over_mean(after, len(live)),
        dropped=dropped,
        bound_met=bound_met,
        targets={(names[k][0], str(names[k][1])): targets[k] for k in order},
    )


def _aggregate(
    holdings: Iterable[Holding],
) -> tuple[dict[bytes, dict[str, int]], dict[bytes, tuple[str, Any]]]:
    """Connections per encoded key per member; duplicate rows add up, zero rows vanish."""
    where: dict[bytes, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    names: dict[bytes, tuple[str, Any]] = {}
    for h in holdings:
        if type(h.count) is not int or h.count < 0:
            raise UsageError(f"connection count of {h.tenant}/{h.user} on {h.member}: {h.count!r}")
        if h.count == 0:
            continue
        key = encode_key((h.tenant, h.user))
        where[key][h.member] += h.count
        names.setdefault(key, (h.tenant, h.user))
    return {k: dict(v) for k, v in where.items()}, names


def _assign(
    placement: Placement,
    order: Sequence[bytes],
    where: dict[bytes, dict[str, int]],
    size: dict[bytes, int],
    owner: dict[bytes, str],
    caps: dict[str, int],
    active: set[str],
) -> dict[bytes, str]:
    """One target per key, in the passes the module docstring describes."""
    loads = dict.fromkeys(placement.members, 0)
    targets: dict[bytes, str] = {}

    def take(k: bytes, m: str) -> bool:
        if m in active and loads[m] + size[k] <= caps[m]:
            loads[m] += size[k]
            targets[k] = m
            return True
        return False

    by_size = sorted(order, key=lambda k: (size[k], k))
    at_owner = [k for k in by_size if set(where[k]) == {owner[k]}]
    elsewhere = [k for k in by_size if set(where[k]) != {owner[k]}]
    deferred = [k for k in at_owner if not take(k, owner[k])]
    deferred += [k for k in elsewhere if not take(k, owner[k])]
    deferred.sort(key=lambda k: (size[k], k))
    walk = [k for k in deferred if not (len(where[k]) == 1 and take(k, next(iter(where[k]))))]
    for k in walk:
        preference = [m for m in placement.preference_of(k) if m in active]
        if not any(take(k, m) for m in preference):
            least = min(preference, key=lambda m: loads[m] + size[k] - caps[m])
            loads[least] += size[k]
            targets[k] = least
    return targets


def _loads(where: dict[bytes, dict[str, int]], live: Sequence[str]) -> dict[str, int]:
    loads = dict.fromkeys(live, 0)
    for per_member in where.values():
        for member, count in per_member.items():
            loads[member] = loads.get(member, 0) + count
    return loads


def _schedule(moves: list[Move], before: dict[str, int], caps: dict[str, int]) -> list[Move]:
    """Reorder moves so that, as far as possible, no prefix pushes a target past capacity.

    Rounds over the ranked list: a move is taken when its target has room now (moves
    out of a member make room for later moves into it); what never fits (a swap between
    two full members) goes last, in rank order. Any prefix — a `--max-moves` budget, an
    interrupted run — then leaves the fleet no worse balanced than the ranks allow.
    """
    loads = dict(before)
    pending = moves
    ordered: list[Move] = []
    while pending:
        waiting = []
        for mv in pending:
            if loads[mv.target] + mv.count <= caps.get(mv.target, 0):
                loads[mv.source] -= mv.count
                loads[mv.target] += mv.count
                ordered.append(mv)
            else:
                waiting.append(mv)
        if len(waiting) == len(pending):
            ordered += waiting
            break
        pending = waiting
    return ordered


def _rank(mv: Move, overloaded: set[str], before: dict[str, int]) -> tuple[Any, ...]:
    urgency = _PRIORITY[mv.reason]
    if mv.reason != GONE and mv.source in overloaded:
        urgency = _PRIORITY[BALANCE]
    return (urgency, -mv.count, -before[mv.source], mv.source, encode_key((mv.tenant, mv.user)))
