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
