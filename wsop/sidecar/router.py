"""Who delivers what: the sidecar's routing decisions as pure code (no sockets, no Redis).

Placement is authoritative: the ring owner of (tenant, user) is the one sidecar that
knows every connection of that user. Its own connections it delivers to; connections
that sit elsewhere (a "straggler" left on its old pod after a scale change, before the
rebalance moves it) are registered with the owner by the pod that holds them, and the
owner forwards to that holder. So a message always takes sender → owner → holder, and
each connection gets each message exactly once.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from wsop.ring import build

UserId = int | str
UserKey = tuple[str, UserId]
Owner = Callable[[UserKey], str]


@dataclass
class DeliveryPlan:
    """Where a message for some users of one tenant goes next.

    `local`: users with connections here. `peers`: owner → users to forward (owners
    deliver and fan out to holders). `holders`: holder → users to deliver without any
    further forwarding. `unreachable`: users the owner knows no connection for.
    """

    local: list[UserId] = field(default_factory=list)
    peers: dict[str, list[UserId]] = field(default_factory=lambda: defaultdict(list))
    holders: dict[str, list[UserId]] = field(default_factory=lambda: defaultdict(list))
    unreachable: list[UserId] = field(default_factory=list)
    foreign: list[UserId] = field(default_factory=list)
    """Users planned here as their owner although our placement names another (a peer
    routed them to us while the two of us disagree about the membership)."""

    def owned(self) -> list[UserId]:
        """Every user this sidecar delivers as the owner (once each, in plan order)."""
        if not self.holders:
            return self.local + self.unreachable
        seen = set(self.local)
        extra = [u for users in self.holders.values() for u in users if u not in seen]
        return self.local + list(dict.fromkeys(extra)) + self.unreachable


OWNER_CACHE = 1 << 16
"""Owners remembered per membership (~150 B each): users looked up, most recent first."""


def placement(algo: str, members: Iterable[str], me: str) -> Owner:
    """The owner function over `members` (`me` alone when there are none), memoised:
    every delivery asks, and hashing a key costs more than a lookup."""
    names = sorted(members)
    if not names:
        return lambda key: me
    return functools.lru_cache(maxsize=OWNER_CACHE)(build(algo, names).owner)


@dataclass(frozen=True)
class HolderChange:
    """Tell `owner` that this sidecar holds (or no longer holds) a connection of `user`.

    `replaces`: the connection moved here from that sidecar; the owner swaps the two
    holders in one step, so every message goes to exactly one of them.
    """

    owner: str
    tenant: str
    user: UserId
    holding: bool
    replaces: str | None = None


class Router:
    """Connection bookkeeping and routing for one sidecar named `name`."""

    def __init__(self, name: str, owner: Owner) -> None:
        self.name = name
        self._owner = owner
        self._conns: dict[UserKey, set[Hashable]] = {}
        self._holders: dict[UserKey, set[str]] = defaultdict(set)
        # Connections moving away: still open (they drain), no longer delivered to.
        self._detached: dict[UserKey, set[Hashable]] = {}

    # -- membership --------------------------------------------------------------------

    def set_owner(self, owner: Owner) -> list[HolderChange]:
        """Adopt a new placement; returns the registrations to send to the new owners.

        Connections stay where they are (the rebalancer moves them); only who must be
        told about them changes. Holder entries we kept for users we no longer own are
        dropped: their holders re-register with the new owner on their own.
        """
        old = self._owner
        self._owner = owner
        changes: list[HolderChange] = []
        for key in self._conns:
            before, after = old(key), owner(key)
            if before == after:
                continue
            if before != self.name:
                changes.append(HolderChange(before, key[0], key[1], False))
            if after != self.name:
                changes.append(HolderChange(after, key[0], key[1], True))
        for key in [k for k in self._holders if owner(k) != self.name]:
            del self._holders[key]
        return changes

    def owner(self, tenant: str, user: UserId) -> str:
        return self._owner((tenant, user))

    # -- connections -------------------------------------------------------------------

    def connect(
        self, tenant: str, user: UserId, conn: Hashable, moved_from: str | None = None
    ) -> tuple[bool, HolderChange | None]:
        """Register a connection; (first connection of this user here, registration to send).

        `moved_from`: the connection is being moved here from that sidecar. As owner we
        take over delivery at once; otherwise the owner is told to swap holders.
        """
        key = (tenant, user)
        first = not self._conns.get(key) and not self._detached.get(key)
        self._conns.setdefault(key, set()).add(conn)
        owner = self._owner(key)
        if owner == self.name:
            if moved_from:
                self.holder(HolderChange(owner, tenant, user, False), moved_from)
            return first, None
        if first or moved_from:
            return first, HolderChange(owner, tenant, user, True, moved_from)
        return first, None

    def disconnect(
        self, tenant: str, user: UserId, conn: Hashable
    ) -> tuple[bool, HolderChange | None]:
        """Forget a connection; (it was the user's last one here, deregistration to send)."""
        key = (tenant, user)
        detached = self._detached.get(key)
        if detached and conn in detached:
            detached.discard(conn)
            if not detached:
                del self._detached[key]
            # the move already told the owner; presence ends only with the last one
            return key not in self._conns and key not in self._detached, None
        conns = self._conns.get(key)
        if not conns or conn not in conns:
            return False, None
        conns.discard(conn)
        if conns:
            return False, None
        del self._conns[key]
        owner = self._owner(key)
        change = HolderChange(owner, tenant, user, False) if owner != self.name else None
        return key not in self._detached, change

    def detach(self, tenant: str, user: UserId) -> list[Hashable]:
        """Stop delivering to the user's connections here (they are moving away)."""
        key = (tenant, user)
        conns = self._conns.pop(key, set())
        if conns:
            self._detached.setdefault(key, set()).update(conns)
        return list(conns)

    def connections(self, tenant: str, user: UserId) -> set[Hashable]:
        return self._conns.get((tenant, user), set())

    def users(self) -> list[tuple[str, UserId, int]]:
        return [(t, u, len(c)) for (t, u), c in self._conns.items()]

    def connection_count(self) -> int:
        return sum(len(c) for c in self._conns.values())

    def is_local(self, tenant: str, user: UserId) -> bool:
        return (tenant, user) in self._conns

    def holder(self, change: HolderChange, holder: str) -> None:
        """Apply a registration received from peer `holder` (we are, or were, the owner)."""
        key = (change.tenant, change.user)
        if change.replaces == self.name:
            self.detach(change.tenant, change.user)  # moved off us: the holder delivers now
        elif change.replaces:
            self._holders.get(key, set()).discard(change.replaces)
        if change.holding:
            self._holders[key].add(holder)
        else:
            holders = self._holders.get(key)
            if holders is not None:
                holders.discard(holder)
                if not holders:
                    del self._holders[key]

    # -- routing -----------------------------------------------------------------------

    def plan(
        self,
        tenant: str,
        users: Iterable[UserId],
        as_owner_only: bool = False,
        redirect: bool = False,
    ) -> DeliveryPlan:
        """Route a message for `users` of `tenant` (all of one tenant, by construction).

        `as_owner_only`: a peer routed this to us as the owner. Users we do not own (the
        two of us disagree about the membership for a moment) are delivered to what we
        hold; with `redirect`, the ones we know nothing about go on to the owner we
        believe in — once: that hop is sent without `redirect`, so nothing loops.
        """
        plan = DeliveryPlan()
        for user in users:
            key = (tenant, user)
            owner = self._owner(key)
            if owner != self.name and not as_owner_only:
                plan.peers[owner].append(user)
                continue
            holders = self._holders.get(key)
            if key in self._conns:
                plan.local.append(user)
            elif not holders:
                if redirect and owner != self.name:
                    plan.peers[owner].append(user)
                    continue
                plan.unreachable.append(user)
            for holder in holders or ():
                plan.holders[holder].append(user)
            if owner != self.name:
                plan.foreign.append(user)
        return plan
