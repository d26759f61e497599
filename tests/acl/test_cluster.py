"""The same seeding, resolution and presence on a real local 3-master Redis Cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from tests.conftest import run_wsop
from wsop.acl import bitmap, keys, seed, synthetic
from wsop.acl.resolve import resolve
from wsop.acl.store import TenantStore
from wsop.backend import connect
from wsop.local.cluster import LocalCluster, start_cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield local
    local.stop()


def test_tenants_spread_over_slots_and_resolve(cluster: LocalCluster) -> None:
    client = connect(cluster.url)
    assert isinstance(client, RedisCluster)
    assert len(client.get_primaries()) == 3
    spec = synthetic.SyntheticSpec(6, 2000, 5, 300, 0.3, seed=1)
    data = list(synthetic.generate(spec))
    store = TenantStore(client)
    seed.seed(store, data, replace=True)
    slots = {client.keyslot(keys.online_key(d.tenant)) for d in data}
    nodes = {client.get_node_from_key(keys.online_key(d.tenant)).name for d in data}
    assert len(slots) == 6 and len(nodes) >= 2  # tenants really live on different masters
    for d in data:
        members = set(bitmap.decode(d.teams["team-0"]).tolist()) | set(
            bitmap.decode(d.teams["team-3"]).tolist()
        )
        online = set(bitmap.decode(d.online).tolist())
        assert resolve(store, d.tenant, ["team-0", "team-3"]).recipients == sorted(members & online)


def test_cli_against_cluster_url(cluster: LocalCluster, tmp_path: Path) -> None:
    members = tmp_path / "m.csv"
    members.write_text("tenant,team,user\nc1,a,1\nc1,a,9\nc2,a,2\n")
    env = {"WSOP_REDIS_URL": cluster.url}
    done = run_wsop("seed", "load", str(members), "--replace", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert run_wsop("online", "add", "--tenant", "c1", "9", env=env).returncode == 0
    done = run_wsop("resolve", "--tenant", "c1", "--team", "a", "--json", env=env)
    assert json.loads(done.stdout)["recipients"] == [9]
    done = run_wsop("resolve", "--tenant", "c2", "--team", "a", "--all", "--json", env=env)
    assert json.loads(done.stdout)["recipients"] == [2]


def test_presence_epoch_leases_and_reassertion_on_a_cluster(cluster: LocalCluster) -> None:
    """The epoch key lives in its own slot: the team pipeline then spans two nodes, which
    redis-py's cluster pipeline splits and runs concurrently; the lease scripts are
    single-slot ({wsop:presence}); re-assertion touches every tenant's node."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from wsop.acl.live import LiveAcl
    from wsop.auth import Identity
    from wsop.backend import connect_async
    from wsop.sidecar.presence import Presence, PresenceTimings

    client = connect(cluster.url)
    tenants = [f"p{i}" for i in range(8)]
    for t in tenants:
        client.hset(keys.meta_key(t), "ids", "int")
        for user in (1, 2):
            client.setbit(keys.team_key(t, "eng"), user, 1)
    epoch_node = client.get_node_from_key(keys.presence_epoch_key()).name
    assert {client.get_node_from_key(keys.meta_key(t)).name for t in tenants} - {epoch_node}

    class Held:
        def __init__(self, tenant: str, user: int) -> None:
            self.ident, self.index = Identity(tenant=tenant, user=user), user

    held = [Held(t, u) for t in tenants for u in (1, 2)]

    async def scenario() -> None:
        acl = LiveAcl(connect_async(cluster.url))
        timings = PresenceTimings(heartbeat_s=0.1, lease_s=0.5, wait_s=1.0)
        p = Presence("s0", acl, timings, lambda: ["s0"], lambda: held, CollectorRegistry())
        try:
            await p.start()
            for h in held:
                await acl.presence("s0", h.ident.tenant, h.index, +1)
            for t in tenants:
                assert await p.team_recipients(t, ["eng"], 1) == ([1, 2], None)
            # a data loss on every node: the epoch and the online bitmaps are gone
            client.delete(keys.presence_epoch_key(), keys.presence_leases_key())
            for t in tenants:
                client.delete(keys.online_key(t), keys.presence_key(t, "s0"))
            res = await acl.resolve_team(tenants[0], ["eng"], 1)
            assert res.epoch is None and res.users == []
            for t in tenants:  # the first message notices, waits for re-assertion, resolves
                assert await p.team_recipients(t, ["eng"], 1) == ([1, 2], None)
            assert p.reasserted == 1 and p.metrics.incomplete._value.get() == 0
            # a dead sidecar on the cluster: claim, release, finish
            await acl.presence("dead", tenants[3], 7, +1)
            await acl.client.zadd(keys.presence_leases_key(), {"dead": 1})
            assert await p.leases.claim("dead", 1000)
            await p._release("dead")
            assert not client.getbit(keys.online_key(tenants[3]), 7)
            assert client.zscore(keys.presence_leases_key(), "dead") is None
        finally:
            await p.stop()
            await acl.close()

    asyncio.run(scenario())
