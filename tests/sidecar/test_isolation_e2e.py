"""Hypothesis drives random tenants, memberships, connections and messages through real
sidecar processes: every delivery is allowed, and every allowed online recipient's
connection gets the message exactly once. Never across tenants."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.stack_helpers import Sidecars, client, drain, seed_tenant
from wsop.sidecar.delivery import MEMBERSHIP_GRACE_S

_counter = itertools.count()


@pytest.fixture(scope="module")
def fleet(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecars]:
    tmp = tmp_path_factory.mktemp("fleet")
    stack = Sidecars(redis_server, tmp / "members.json", {})
    stack.write_members()
    for name in ("s0", "s1", "s2"):
        stack.start(name, tmp)
    stack.write_members()
    # Past the grace after a membership change, a message to a user nobody holds is
    # acked at once (within it, it is retried for a while first).
    time.sleep(MEMBERSHIP_GRACE_S + 0.5)
    yield stack
    stack.stop_all()


USERS = st.integers(0, 9)
scenario = st.fixed_dictionaries(
    {
        "teams": st.dictionaries(
            st.sampled_from(["red", "blue", "green"]), st.sets(USERS, max_size=6), min_size=1
        ),
        # (tenant index, user, sidecar index): users of both tenants share numeric ids
        "conns": st.lists(st.tuples(st.integers(0, 1), USERS, st.integers(0, 2)), max_size=10),
        "messages": st.lists(
            st.tuples(
                st.integers(0, 1),
                USERS,
                st.one_of(
                    st.tuples(st.just("direct"), USERS),
                    st.tuples(
                        st.just("team"),
                        st.lists(
                            st.sampled_from(["red", "blue", "green"]),
                            min_size=1,
                            max_size=2,
                            unique=True,
                        ),
                    ),
                ),
            ),
            min_size=1,
            max_size=4,
        ),
    }
)


@settings(
    max_examples=10,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # shrinking real processes takes minutes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=scenario)
def test_random_traffic_is_delivered_exactly_to_allowed_connections(
    fleet: Sidecars, redis_server: str, case: dict
) -> None:
    r = redis.Redis.from_url(redis_server)
    run = next(_counter)
    tenants = [f"iso{run}a", f"iso{run}b"]
    for tenant in tenants:  # the same team names and user ids in both tenants
        seed_tenant(r, tenant, case["teams"])
    urls = [p.url for p in fleet.procs.values()]
    sockets = {}
    for i, (t, user, where) in enumerate(case["conns"]):
        sockets[i] = (tenants[t], user, client(urls[where], tenants[t], user))
    time.sleep(0.2)
    try:
        for t, sender, (kind, target) in case["messages"]:
            tenant = tenants[t]
            conn = client(urls[sender % 3], tenant, sender)
            sockets_by_user = Counter((tn, u) for tn, u, _ in sockets.values())
            if kind == "direct":
                conn.send(json.dumps({"type": "direct", "to": target, "data": run, "id": "m"}))
                allowed = {target}
            else:
                conn.send(json.dumps({"type": "team", "teams": target, "data": run, "id": "m"}))
                member = all(sender in case["teams"].get(team, set()) for team in target)
                union = set().union(*(case["teams"].get(team, set()) for team in target))
                allowed = union if member else set()
            replies = drain(conn, 0.5)
            if kind == "team" and not member:
                assert [f["code"] for f in replies if f["type"] == "error"] == ["forbidden"]
            else:
                acks = [f for f in replies if f["type"] == "ack"]
                online = {u for (tn, u) in sockets_by_user if tn == tenant}
                online.add(sender)  # the sending connection is online too
                assert len(acks) == 1
                assert acks[0]["delivered"] == len(allowed & online), (replies, allowed, online)
            for tn, user, ws in sockets.values():
                got = [f for f in drain(ws, 0.05) if f["type"] == "message"]
                should = tn == tenant and user in allowed
                assert len(got) == (1 if should else 0), (tn, user, kind, target, got)
            conn.close()
    finally:
        for _, _, ws in sockets.values():
            ws.close()
        r.close()
