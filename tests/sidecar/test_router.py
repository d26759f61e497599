"""The sidecar's routing core, without sockets: every connection of every recipient gets a
message exactly once, across stragglers, membership changes and moves."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from wsop.ring import build
from wsop.sidecar.router import HolderChange, Router

NAMES = ["s0", "s1", "s2", "s3"]


class Fleet:
    """Routers wired together the way peer links wire them, synchronously."""

    def __init__(self, members: list[str]) -> None:
        self.members = members
        self.routers = {n: Router(n, build("rendezvous", members).owner) for n in NAMES}

    def send_change(self, holder: str, change: HolderChange | None) -> None:
        if change is not None:
            self.routers[change.owner].holder(change, holder)

    def connect(self, where: str, tenant: str, user: int, conn: str, moved_from=None) -> None:
        _, change = self.routers[where].connect(tenant, user, conn, moved_from)
        self.send_change(where, change)

    def disconnect(self, where: str, tenant: str, user: int, conn: str) -> None:
        _, change = self.routers[where].disconnect(tenant, user, conn)
        self.send_change(where, change)

    def rescale(self, members: list[str]) -> None:
        self.members = members
        owner = build("rendezvous", members).owner
        for name, router in self.routers.items():
            for change in router.set_owner(owner):
                self.send_change(name, change)

    def deliver(self, sender: str, tenant: str, users: list[int]) -> Counter[str]:
        got: Counter[str] = Counter()

        def local(router: Router, local_users) -> None:
            for user in local_users:
                for conn in router.connections(tenant, user):
                    got[conn] += 1

        def fan_out(router: Router, plan) -> None:
            local(router, plan.local)
            for holder, held in plan.holders.items():
                local(self.routers[holder], held)

        plan = self.routers[sender].plan(tenant, users)
        fan_out(self.routers[sender], plan)
        for owner, owned in plan.peers.items():
            fan_out(self.routers[owner], self.routers[owner].plan(tenant, owned, True))
        return got


connections = st.lists(
    st.tuples(st.sampled_from(NAMES[:3]), st.sampled_from(["A", "B"]), st.integers(0, 12)),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(conns=connections, grow=st.booleans(), sender=st.sampled_from(NAMES[:3]))
def test_every_connection_gets_each_message_exactly_once(conns, grow, sender) -> None:
    fleet = Fleet(NAMES[:3])
    placed = []
    for i, (where, tenant, user) in enumerate(conns):
        fleet.connect(where, tenant, user, f"c{i}")
        placed.append((where, tenant, user, f"c{i}"))
    if grow:
        fleet.rescale(NAMES)  # connections stay put: now stragglers of the new owners
    for tenant in ("A", "B"):
        users = list(range(13))
        got = fleet.deliver(sender, tenant, users)
        expected = {c for _, t, _, c in placed if t == tenant}
        assert set(got) == expected  # nobody of the other tenant, nobody missed
        assert all(n == 1 for n in got.values())


@settings(max_examples=100, deadline=None)
@given(conns=connections, data=st.data())
def test_moves_hand_over_without_gaps_or_duplicates(conns, data) -> None:
    """A move takes all of a user's connections on one sidecar (that is what /move does)."""
    fleet = Fleet(NAMES[:3])
    fleet.rescale(NAMES)
    groups: dict[tuple[str, str, int], list[str]] = {}
    for i, (where, tenant, user) in enumerate(conns):
        fleet.connect(where, tenant, user, f"c{i}")
        groups.setdefault((where, tenant, user), []).append(f"c{i}")

    def check(sender: str, successor: dict[str, str]) -> None:
        for t in ("A", "B"):
            got = fleet.deliver(sender, t, list(range(13)))
            for (_, tenant, _), old in groups.items():
                if tenant != t:
                    continue
                for c in old:  # the old connection or its replacement, never both
                    assert got[c] + got.get(successor.get(c, ""), 0) == 1, (c, got)

    for (where, tenant, user), old in list(groups.items()):
        target = data.draw(st.sampled_from(NAMES))
        if target == where:
            continue
        # make-before-break: the new upstreams register with moved_from ...
        successor = {c: c + "'" for c in old}
        for c in old:
            fleet.connect(target, tenant, user, successor[c], moved_from=where)
        check("s0", successor)
        # ... then the old ones close after the grace period
        for c in old:
            fleet.disconnect(where, tenant, user, c)
        del groups[(where, tenant, user)]
        groups.setdefault((target, tenant, user), []).extend(successor.values())
        check("s1", {})


def test_disconnect_of_last_connection_deregisters_with_owner() -> None:
    fleet = Fleet(NAMES[:3])
    owner = fleet.routers["s0"].owner("A", 1)
    other = next(n for n in NAMES[:3] if n != owner)
    fleet.connect(other, "A", 1, "tab1")
    fleet.connect(other, "A", 1, "tab2")
    assert fleet.deliver(owner, "A", [1]) == Counter({"tab1": 1, "tab2": 1})
    fleet.disconnect(other, "A", 1, "tab1")
    fleet.disconnect(other, "A", 1, "tab2")
    plan = fleet.routers[owner].plan("A", [1])
    assert plan.unreachable == [1] and not plan.holders


def test_owner_that_no_longer_owns_redirects_once() -> None:
    """A peer still on the old membership sends us a user we no longer own: we pass it
    to the owner we believe in, and that hop is never forwarded again."""
    old = Router("s0", build("rendezvous", ["s0"]).owner)
    old.set_owner(build("rendezvous", ["s0", "s1", "s2"]).owner)
    user = next(u for u in range(100) if old.owner("A", u) != "s0")
    plan = old.plan("A", [user], as_owner_only=True, redirect=True)
    assert dict(plan.peers) == {old.owner("A", user): [user]} and not plan.unreachable
    final = old.plan("A", [user], as_owner_only=True, redirect=False)
    assert final.unreachable == [user] and not final.peers
