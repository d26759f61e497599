"""The rebalance planner, with no server at all: properties over random fleets."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsop.errors import UsageError
from wsop.k8s.plan import BALANCE, GONE, OWNER, Holding, Plan, plan_rebalance
from wsop.ring import build

NAMES = ["ws-0", "ws-1", "ws-2", "ws-3", "ws-4", "ws-5"]
GONE_NAMES = ["ws-old-a", "ws-old-b"]
LOOSE = 1e6


def fleets(max_count: int = 3):
    """(members, holdings): 1–5 live members, connections on live and gone members."""

    @st.composite
    def build_fleet(draw):
        n = draw(st.integers(1, 5))
        members = NAMES[:n]
        hosts = members + GONE_NAMES[: draw(st.integers(0, 2))]
        rows = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(hosts),
                    st.sampled_from(["acme", "globex"]),
                    st.integers(0, 40),
                    st.integers(1, max_count),
                ),
                max_size=60,
            )
        )
        return members, [Holding(m, t, u, c) for m, t, u, c in rows]

    return build_fleet()


def apply(plan: Plan, holdings: list[Holding]) -> dict[tuple[str, str], dict[str, int]]:
    """Where every key's connections sit after executing `plan` (keys as text)."""
    state: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for h in holdings:
        state[(h.tenant, str(h.user))][h.member] += h.count
    for mv in plan.moves:
        here = state[(mv.tenant, str(mv.user))]
        assert here[mv.source] == mv.count, f"move of {mv} does not match what sits there"
        del here[mv.source]
        here[mv.target] += mv.count
    return {k: {m: c for m, c in v.items() if c} for k, v in state.items()}


def loads_of(state) -> dict[str, int]:
    loads: dict[str, int] = defaultdict(int)
    for per_member in state.values():
        for member, count in per_member.items():
            loads[member] += count
    return loads


def misplaced_entries(members, holdings) -> int:
    """Entries (key, member) not on the key's ring owner: the minimum for goal (a)."""
    ring = build("rendezvous", members)
    entries = {(h.tenant, str(h.user), h.member) for h in holdings if h.count}
    return sum(1 for t, u, m in entries if m != ring.owner((t, u)))


# --- properties ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(fleets(), st.sampled_from([0.0, 0.1, 0.25, 1.0]))
def test_after_the_plan_every_connection_sits_on_its_target(fleet, epsilon):
    members, holdings = fleet
    plan = plan_rebalance("rendezvous", members, holdings, epsilon=epsilon)
    state = apply(plan, holdings)
    for key, per_member in state.items():
        assert set(per_member) == {plan.targets[key]}, key
        assert plan.targets[key] in members
    assert dict(loads_of(state)) == {m: c for m, c in plan.loads_after.items() if c}
    assert plan.dropped == 0


@settings(max_examples=150, deadline=None)
@given(fleets(max_count=1), st.sampled_from([0.0, 0.05, 0.25, 0.5]))
def test_unit_connections_always_meet_the_bound(fleet, epsilon):
    members, rows = fleet
    holdings = list({(h.tenant, h.user): h for h in rows}.values())  # one connection a user
    plan = plan_rebalance("rendezvous", members, holdings, epsilon=epsilon)
    total = sum(h.count for h in holdings)
    cap = math.ceil((1 + epsilon) * total / len(members))
    after = loads_of(apply(plan, holdings))
    assert all(load <= cap for load in after.values()), (after, cap)
    assert plan.bound_met
    if total:
        assert plan.after == round(max(after.values()) / (total / len(members)), 6)


@settings(max_examples=150, deadline=None)
@given(fleets())
def test_with_a_loose_epsilon_the_plan_is_exactly_the_misplaced_connections(fleet):
    members, holdings = fleet
    plan = plan_rebalance("rendezvous", members, holdings, epsilon=LOOSE)
    ring = build("rendezvous", members)
    assert len(plan.moves) == misplaced_entries(members, holdings)
    assert all(mv.target == ring.owner((mv.tenant, mv.user)) for mv in plan.moves)
    assert {mv.reason for mv in plan.moves} <= {OWNER, GONE}
    assert all((mv.reason == GONE) == (mv.source not in members) for mv in plan.moves)


@settings(max_examples=100, deadline=None)
@given(fleets(), st.integers(0, 10), st.sampled_from([0.0, 0.25]))
def test_max_moves_is_respected_and_keeps_a_subset_of_the_full_plan(fleet, budget, epsilon):
    members, holdings = fleet
    full = plan_rebalance("rendezvous", members, holdings, epsilon=epsilon)
    cut = plan_rebalance("rendezvous", members, holdings, epsilon=epsilon, max_moves=budget)
    assert len(cut.moves) == min(budget, len(full.moves))
    assert cut.dropped == len(full.moves) - len(cut.moves)
    assert list(cut.moves) == list(full.moves[: len(cut.moves)])
    assert sum(cut.loads_after.values()) == sum(full.loads_before.values())
    if cut.dropped:
        assert not cut.bound_met
    apply(cut, holdings)  # every kept move still matches what sits on its source


@settings(max_examples=100, deadline=None)
@given(fleets(), st.randoms(use_true_random=False), st.sampled_from([0.0, 0.25]))
def test_the_plan_does_not_depend_on_input_order_or_row_splitting(fleet, rnd, epsilon):
    members, holdings = fleet
    plan = plan_rebalance("rendezvous", members, holdings, epsilon=epsilon)
    split = []
    for h in holdings:  # the same connections, reported as one row per connection
        split += [Holding(h.member, h.tenant, h.user, 1) for _ in range(h.count)]
    rnd.shuffle(split)
    shuffled_members = list(members)
    rnd.shuffle(shuffled_members)
    again = plan_rebalance("rendezvous", shuffled_members, split, epsilon=epsilon)
    assert again.moves == plan.moves
    assert again.before == plan.before and again.after == plan.after


@settings(max_examples=100, deadline=None)
@given(fleets(), st.sampled_from([0.0, 0.25, LOOSE]))
def test_moves_never_go_below_the_lower_bound_and_never_target_unavailable(fleet, epsilon):
    members, holdings = fleet
    unavailable = members[-1:] if len(members) > 1 else []
    plan = plan_rebalance("rendezvous", members, holdings, epsilon=epsilon, unavailable=unavailable)
    per_key: dict[tuple[str, str], set[str]] = defaultdict(set)
    for h in holdings:
        per_key[(h.tenant, str(h.user))].add(h.member)
    on_gone = {(k, m) for k, ms in per_key.items() for m in ms if m not in members}
    spread = sum(len(ms) - 1 for ms in per_key.values())
    assert len(plan.moves) >= max(len(on_gone), spread)
    assert not any(mv.target in unavailable for mv in plan.moves)
    assert not any(m not in members for m in loads_of(apply(plan, holdings)))


# --- examples -----------------------------------------------------------------------


def test_a_deleted_pod_s_connections_move_to_their_owners_first():
    members = ["ws-0", "ws-1", "ws-2"]
    ring = build("maglev", members)
    holdings = [Holding("ws-9", "acme", u, 1) for u in range(12)]
    holdings += [Holding(ring.owner(("acme", u)), "acme", u, 1) for u in range(100, 130)]
    plan = plan_rebalance(ring, members, holdings, epsilon=LOOSE)
    assert len(plan.moves) == 12
    assert all(mv.reason == GONE and mv.source == "ws-9" for mv in plan.moves)
    assert all(mv.target == ring.owner((mv.tenant, mv.user)) for mv in plan.moves)
    assert "ws-9" in plan.loads_before and "ws-9" not in plan.loads_after
    assert plan.algo == "maglev"


def test_an_overloaded_owner_sheds_the_fewest_keys_and_only_its_excess():
    members = ["a", "b"]
    ring = build("rendezvous", members)
    mine = [u for u in range(400) if ring.owner(("t", u)) == "a"][:20]
    holdings = [Holding("a", "t", u, 1) for u in mine]  # 20 on a, 0 on b, all on owner
    holdings.append(Holding("a", "t", mine[0], 9))  # one heavy user: 10 connections
    plan = plan_rebalance(ring, members, holdings, epsilon=0.0)
    # total 29, cap ceil(14.5) = 15: a must shed 14 connections; the heavy user (10)
    # and four light ones is 5 moves, the fewest possible.
    assert plan.capacity == 15
    assert len(plan.moves) == 5
    assert {mv.reason for mv in plan.moves} == {BALANCE}
    assert plan.loads_after == {"a": 15, "b": 14}
    assert plan.before == round(29 / 14.5, 6) and plan.after == round(15 / 14.5, 6)


def test_a_user_too_big_for_any_member_is_placed_and_reported():
    plan = plan_rebalance(
        "rendezvous", ["a", "b"], [Holding("a", "t", 1, 50), Holding("b", "t", 2, 1)], 0.1
    )
    assert not plan.bound_met
    assert sum(plan.loads_after.values()) == 51


def test_no_connections_means_no_moves():
    plan = plan_rebalance("maglev", ["ws-0", "ws-1"], [])
    assert plan.moves == () and plan.before == 0.0 and plan.after == 0.0 and plan.bound_met


def test_the_swap_of_two_full_members_is_planned_last_but_planned():
    members = ["a", "b"]
    ring = build("rendezvous", members)
    on_a = [u for u in range(200) if ring.owner(("t", u)) == "a"]
    on_b = [u for u in range(200) if ring.owner(("t", u)) == "b"]
    holdings = [Holding("a", "t", u, 1) for u in on_a[:4]] + [Holding("b", "t", on_a[4], 1)]
    holdings += [Holding("b", "t", u, 1) for u in on_b[:4]] + [Holding("a", "t", on_b[4], 1)]
    plan = plan_rebalance(ring, members, holdings, epsilon=0.0)
    assert sorted((mv.source, mv.target) for mv in plan.moves) == [("a", "b"), ("b", "a")]


def test_moves_into_a_member_wait_for_the_moves_that_make_room():
    members = ["a", "b", "c"]
    holdings = [Holding("a", "t", i, 1) for i in range(30)]
    holdings += [Holding("old", "t", 100 + i, 2) for i in range(5)]
    plan = plan_rebalance("rendezvous", members, holdings, epsilon=0.1, max_moves=5)
    assert plan.after <= plan.before  # a prefix never makes the worst member worse


def test_matrix_and_json_add_up():
    members = ["a", "b", "c"]
    holdings = [Holding("a", "t", i, 1 + i % 3) for i in range(40)]
    plan = plan_rebalance("rendezvous", members, holdings, epsilon=0.1)
    cells = plan.matrix()
    assert sum(c["moves"] for c in cells) == len(plan.moves)
    assert sum(c["connections"] for c in cells) == sum(mv.count for mv in plan.moves)
    doc = plan.to_json()
    assert doc["moves"] == len(plan.moves) and doc["before"] == plan.before
    assert doc["plan"][0].keys() == {"tenant", "user", "from", "to", "count", "reason"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algo": "bounded"}, "bounded loads on top"),
        ({"algo": "nope"}, "unknown algorithm"),
        ({"max_moves": -1}, "--max-moves"),
        ({"epsilon": -0.5}, "epsilon"),
        ({"holdings": [Holding("a", "t", 1, -2)]}, "connection count"),
        ({"unavailable": ["a", "b"]}, "no member can receive"),
    ],
)
def test_bad_input_is_a_usage_error(kwargs, message):
    args = {"algo": "rendezvous", "members": ["a", "b"], "holdings": [Holding("a", "t", 1)]}
    args.update(kwargs)
    with pytest.raises(UsageError, match=message):
        plan_rebalance(**args)


def test_integer_and_text_user_ids_are_the_same_key():
    plan = plan_rebalance(
        "rendezvous", ["a", "b"], [Holding("a", "t", 7, 1), Holding("b", "t", "7", 1)], LOOSE
    )
    assert len(plan.moves) == 1
    assert len(plan.targets) == 1


def test_big_fleet_is_planned_quickly():
    rnd = random.Random(5)
    members = [f"ws-{i}" for i in range(8)]
    holdings = [
        Holding(rnd.choice(members[:5]), "acme", u, rnd.randint(1, 2)) for u in range(20_000)
    ]
    plan = plan_rebalance("maglev", members, holdings, epsilon=0.1)
    assert plan.bound_met
    assert plan.after <= 1.1 + 8 / 30_000  # ceil() slack


def test_a_displaced_key_that_already_sits_where_there_is_room_stays_put():
    members = ["a", "b", "c"]
    ring = build("rendezvous", members)
    owned_by_a = [u for u in range(500) if ring.owner(("t", u)) == "a"]
    x = next(u for u in owned_by_a if ring.preference(("t", u))[1] == "b")
    holdings = [Holding("a", "t", u, 1) for u in owned_by_a if u != x][:10]
    holdings.append(Holding("c", "t", x, 1))  # its owner a is full, c has room
    plan = plan_rebalance(ring, members, holdings, epsilon=0.0)
    assert plan.targets[("t", str(x))] == "c"
    assert not any(mv.user == x for mv in plan.moves)
    assert len(plan.moves) == 6  # a keeps ceil(11 / 3) = 4 of its 10
