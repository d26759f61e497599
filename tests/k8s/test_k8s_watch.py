"""The watch-driven rebalancer against kmock's emulated API, with the real `kubernetes`
client: Lease election (acquire, renew, conflicts, release, a stale lease taken over),
the EndpointSlice watch, and the loop end to end — a new sidecar appears through the
watch and is rebalanced onto without anyone running a command; only the leader moves.

kmock serves in the test's event loop and the client is synchronous, so everything that
calls the API runs in threads while the test awaits. kmock ignores label selectors and
resourceVersion preconditions: the tests assert both on the recorded requests, and
inject the 409 a real API server would answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request

import pytest

from tests.k8s.test_k8s import ADMIN, NS, add_pods, cluster_for, pod, proxy_path, requests_to
from wsop.k8s.lease import LeaseElector
from wsop.k8s.operator import WatchConfig, WatchRebalancer
from wsop.k8s.rebalance import kubernetes_fleet
from wsop.k8s.watch import SliceWatch

LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
LEASE = f"{LEASES}/wsop-rebalancer"
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
CONFLICT = {"kind": "Status", "code": 409, "reason": "Conflict", "message": "object was modified"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def once(kmock, method: str, path: str, watch: bool = False, times: int = 1):
    """A kmock filter that matches only the next `times` such requests (kmock**N is a
    priority, not a count): requests recorded before it was made never match."""
    start = len(list(kmock))
    fired: set[int] = set()

    def match(req) -> bool:
        new = req.id >= start and req.method == method and req.url.path == path
        new = new and (req.params.get("watch") == "true") == watch
        if new and len(fired) < times:
            fired.add(req.id)
        return req.id in fired

    return match


def elector(kmock, identity: str, clock: Clock | None = None, duration: float = 15):
    kw = {"monotonic": clock} if clock else {}
    return LeaseElector(cluster_for(kmock), NS, "wsop-rebalancer", identity, duration, **kw)


def lease_spec(kmock) -> dict:
    return dict(kmock.objects["coordination.k8s.io/v1/leases", NS, "wsop-rebalancer"])["spec"]


def writes(kmock) -> list:
    return [r for r in kmock if r.url.path.startswith(LEASES) and r.method in ("POST", "PATCH")]


def body(request) -> dict:
    return json.loads(request.body)


# --- the Lease ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_first_candidate_creates_the_lease_and_the_second_follows(kmock):
    clock = Clock()
    a, b = elector(kmock, "pod-a", clock), elector(kmock, "pod-b", clock)
    assert await asyncio.to_thread(a.step) is True
    (create,) = writes(kmock)
    assert create.method == "POST" and create.url.path == LEASES
    assert body(create)["spec"]["holderIdentity"] == "pod-a"
    assert body(create)["spec"]["leaseDurationSeconds"] == 15
    assert create.headers["Authorization"] == "Bearer api-token-123"

    assert await asyncio.to_thread(b.step) is False  # a holds it, fresh
    assert b.holder == "pod-a" and len(writes(kmock)) == 1  # b wrote nothing

    clock.now += 5
    assert await asyncio.to_thread(a.step) is True  # renew
    renew = writes(kmock)[-1]
    assert renew.method == "PATCH" and renew.url.path == LEASE
    assert renew.headers["Content-Type"] == "application/merge-patch+json"
    assert body(renew)["spec"]["holderIdentity"] == "pod-a"
    assert lease_spec(kmock)["renewTime"] == body(renew)["spec"]["renewTime"]

    # b keeps seeing the record change, so a long wait never makes it "stale"
    for _ in range(4):
        clock.now += 10
        assert await asyncio.to_thread(b.step) is False
        assert await asyncio.to_thread(a.step) is True
    assert all(body(w)["spec"]["holderIdentity"] == "pod-a" for w in writes(kmock))


@pytest.mark.asyncio
async def test_a_stale_lease_is_taken_over_after_one_duration(kmock):
    kmock.objects["coordination.k8s.io/v1/leases", NS, "wsop-rebalancer"] = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "wsop-rebalancer", "namespace": NS, "resourceVersion": "41"},
        "spec": {
            "holderIdentity": "crashed-pod",
            "leaseDurationSeconds": 15,
            "renewTime": "2026-01-01T00:00:00.000000Z",
            "acquireTime": "2026-01-01T00:00:00.000000Z",
            "leaseTransitions": 3,
        },
    }
    clock = Clock()
    b = elector(kmock, "pod-b", clock)
    assert await asyncio.to_thread(b.step) is False  # first sight: wait a full duration
    clock.now += 14
    assert await asyncio.to_thread(b.step) is False
    assert writes(kmock) == []
    clock.now += 2
    assert await asyncio.to_thread(b.step) is True
    (take,) = writes(kmock)
    sent = body(take)
    assert sent["metadata"] == {"resourceVersion": "41"}  # the precondition: what we read
    assert sent["spec"]["holderIdentity"] == "pod-b"
    assert sent["spec"]["leaseTransitions"] == 4
    assert sent["spec"]["acquireTime"] == sent["spec"]["renewTime"]
    assert lease_spec(kmock)["holderIdentity"] == "pod-b"


@pytest.mark.asyncio
async def test_conflicts_mean_not_leader_never_an_error(kmock):
    clock = Clock()
    a = elector(kmock, "pod-a", clock)
    kmock[once(kmock, "POST", LEASES)] << 409 << {**CONFLICT, "reason": "AlreadyExists"}
    assert await asyncio.to_thread(a.step) is False  # lost the race to create it
    assert a.last_error is None and a.is_leader is False

    # (kmock stored our Lease despite the 409: the next try finds it ours and renews it)
    assert await asyncio.to_thread(a.step) is True
    kmock[once(kmock, "PATCH", LEASE)] << 409 << CONFLICT
    clock.now += 5
    assert await asyncio.to_thread(a.step) is False  # someone wrote since we read: we lost
    assert a.is_leader is False and a.last_error is None
    clock.now += 5
    assert await asyncio.to_thread(a.step) is True  # it was still ours: renewed


@pytest.mark.asyncio
async def test_leadership_expires_without_renewal_and_rbac_errors_are_reported(kmock):
    clock = Clock()
    a = elector(kmock, "pod-a", clock)
    assert await asyncio.to_thread(a.step) is True
    clock.now += 11  # past renew_deadline (2/3 of 15 s) with no successful renewal
    assert a.is_leader is False

    forbidden = {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "no leases"}
    kmock[once(kmock, "GET", LEASE)] << 403 << forbidden
    assert await asyncio.to_thread(a.step) is False
    assert "cannot get leases.coordination.k8s.io in namespace 'chat'" in a.last_error


@pytest.mark.asyncio
async def test_release_hands_over_at_once(kmock):
    clock = Clock()
    a, b = elector(kmock, "pod-a", clock), elector(kmock, "pod-b", clock)
    assert await asyncio.to_thread(a.step) is True
    assert await asyncio.to_thread(b.step) is False
    await asyncio.to_thread(a.release)
    release = writes(kmock)[-1]
    assert body(release)["spec"]["holderIdentity"] == ""
    assert body(release)["spec"]["leaseDurationSeconds"] == 1
    assert a.is_leader is False
    assert await asyncio.to_thread(b.step) is True  # no need to wait for a duration
    assert lease_spec(kmock)["holderIdentity"] == "pod-b"
    assert lease_spec(kmock)["leaseTransitions"] == 1


# --- the EndpointSlice watch ----------------------------------------------------------


def endpoint_slice(name: str, ready: dict[str, bool]) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": "wsop-sidecars"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [f"10.0.0.{10 + i}"],
                "conditions": {"ready": ok},
                "targetRef": {"kind": "Pod", "name": pod_name, "namespace": NS},
            }
            for i, (pod_name, ok) in enumerate(sorted(ready.items()))
        ],
    }


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_slice_watch_lists_then_follows_events(kmock):
    kmock.objects["discovery.k8s.io/v1/endpointslices", NS, "sc-1"] = endpoint_slice(
        "sc-1", {"ws-0": True}
    )
    changes: list[str] = []
    cluster = cluster_for(kmock)
    watcher = SliceWatch(cluster, NS, "wsop-sidecars", changes.append, idle_s=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        await until(lambda: changes, what="the initial list")
        assert changes == ["listed: +ws-0"]
        await until(lambda: watcher.watches, what="the watch")

        from kubernetes import client as k8s

        api = k8s.DiscoveryV1Api(cluster.api)
        second = endpoint_slice("sc-2", {"ws-1": True, "ws-2": False})
        await asyncio.to_thread(api.create_namespaced_endpoint_slice, NS, second)
        await until(lambda: len(changes) == 2, what="the ADDED event")
        assert changes[1] == "endpointslice sc-2 added: +ws-1"

        await asyncio.to_thread(api.delete_namespaced_endpoint_slice, "sc-2", NS)
        await until(lambda: len(changes) == 3, what="the DELETED event")
        assert changes[2] == "endpointslice sc-2 deleted: -ws-1"
    finally:
        stop.set()

    gets = [r for r in requests_to(kmock, SLICES) if r.method == "GET"]
    (listed,) = [r for r in gets if "watch" not in r.params]
    watched = [r for r in gets if r.params.get("watch") == "true"]
    assert listed.params["labelSelector"] == "kubernetes.io/service-name=wsop-sidecars"
    assert watched and watched[0].params["labelSelector"] == listed.params["labelSelector"]
    assert "resourceVersion" in watched[0].params  # from the list: no event is missed


@pytest.mark.asyncio
async def test_slice_watch_relists_after_410_gone(kmock):
    kmock.objects["discovery.k8s.io/v1/endpointslices", NS, "sc-1"] = endpoint_slice(
        "sc-1", {"ws-0": True}
    )
    expired = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    gone = {"type": "ERROR", "object": expired}
    kmock[once(kmock, "GET", SLICES, watch=True)] << (gone,)  # a tuple: a stream
    watcher = SliceWatch(cluster_for(kmock), NS, "wsop-sidecars", lambda reason: None, idle_s=0.5)
    stop = threading.Event()
    threading.Thread(target=watcher.run, args=(stop,), daemon=True).start()
    try:
        await until(lambda: watcher.lists >= 2, what="a second list after 410")
        assert watcher.last_error is None  # 410 is routine, not an error
        await until(lambda: watcher.watches >= 2, what="watching again")
    finally:
        stop.set()


# --- the loop, end to end -------------------------------------------------------------


class Sidecars:
    """Stand-in sidecars behind pods/proxy: (tenant, user) -> member, moved by /move."""

    def __init__(self, kmock, placement: dict[str, list[int]]) -> None:
        self.where = {("acme", u): name for name, users in placement.items() for u in users}
        self.kmock = kmock
        for i, name in enumerate(sorted(placement)):
            self.add(name, i)

    def add(self, name: str, i: int) -> None:
        add_pods(self.kmock, pod(name, f"10.0.0.{10 + i}"))
        self.kmock["get", proxy_path(name, "connections")] << (
            lambda req, name=name: {"name": name, "users": self.users(name)}
        )
        self.kmock["get", proxy_path(name, "move")] << (
            lambda req, name=name: {"moved": self.move(name, req.params)}
        )

    def users(self, name: str) -> list[dict]:
        held = [key for key, member in self.where.items() if member == name]
        return [{"tenant": t, "user": u, "count": 1} for t, u in held]

    def move(self, name: str, params) -> int:
        key = (params["tenant"], int(params["user"]))
        if self.where.get(key) != name:
            return 0
        self.where[key] = params["to"]
        return 1

    def loads(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for member in self.where.values():
            out[member] = out.get(member, 0) + 1
        return out


def loop_for(kmock, identity: str, reports: list, port: int | None = None) -> WatchRebalancer:
    cluster = cluster_for(kmock)
    config = WatchConfig(epsilon=0.1, max_moves=None, rate=1000, debounce=0.2, retry=0.5)
    loop = WatchRebalancer(
        lambda: kubernetes_fleet(
            cluster, NS, "ws.operator/enabled=true", "maglev", ADMIN, "wsop-sidecars"
        ),
        SliceWatch(cluster, NS, "wsop-sidecars", lambda reason: loop.notify(reason), idle_s=0.5),
        LeaseElector(cluster, NS, "wsop-rebalancer", identity, duration=3),
        config,
        reports.append,
    )
    return loop


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_new_sidecar_is_rebalanced_onto_by_the_leader_alone(kmock, monkeypatch):
    import wsop.k8s.rebalance as rebalance_module

    monkeypatch.setattr(rebalance_module, "VERIFY_AFTER_S", 0.0)
    fleet = Sidecars(kmock, {"ws-0": list(range(0, 60)), "ws-1": list(range(60, 120))})
    slices = {"ws-0": True, "ws-1": True}
    kmock.objects["discovery.k8s.io/v1/endpointslices", NS, "sc"] = endpoint_slice("sc", slices)
    reports_a: list[dict] = []
    reports_b: list[dict] = []
    a = loop_for(kmock, "pod-a", reports_a)
    port = a.metrics.serve(0, "127.0.0.1")
    threading.Thread(target=a.run, daemon=True).start()
    await until(lambda: a.elector.is_leader, what="pod-a leading")
    b = loop_for(kmock, "pod-b", reports_b)
    threading.Thread(target=b.run, daemon=True).start()
    try:
        await until(lambda: any(r["event"] == "run" for r in reports_a), what="a first run")
        await asyncio.sleep(0.5)
        moves_before = len(requests_to(kmock, r".*/proxy/move"))

        # scale up: a third pod becomes ready, its slice changes: nobody runs a command
        fleet.add("ws-2", 2)
        from kubernetes import client as k8s

        api = k8s.DiscoveryV1Api(cluster_for(kmock).api)
        patch = {"endpoints": endpoint_slice("sc", {**slices, "ws-2": True})["endpoints"]}
        await asyncio.to_thread(api.patch_namespaced_endpoint_slice, "sc", NS, patch)

        def rebalanced() -> bool:
            return any(
                r["event"] == "run" and r["moved"] > 0 and "+ws-2" in r["reason"] for r in reports_a
            )

        await until(rebalanced, timeout=20, what="a run triggered by the watch")
        run = next(r for r in reports_a if r["event"] == "run" and "+ws-2" in r["reason"])
        assert run["after"] <= 1.1 < run["before"] and run["errors"] == 0
        assert fleet.loads().get("ws-2", 0) >= 35  # ~a third of 120
        assert len(requests_to(kmock, r".*/proxy/move")) > moves_before

        # only the leader acted; the follower kept trying for the Lease
        assert b.runs == 0 and not b.elector.is_leader
        assert not any(r["event"] == "run" for r in reports_b)
        patches = [r for r in kmock if r.url.path == LEASE and r.method == "PATCH"]
        assert all(body(r)["spec"]["holderIdentity"] == "pod-a" for r in patches)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        values = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in metrics.splitlines()
            if line.startswith("wsop_rebalancer_")
        }
        assert values["wsop_rebalancer_leader"] == 1.0
        assert values["wsop_rebalancer_members"] == 3.0
        assert values["wsop_rebalancer_misplaced_connections"] == 0.0
        assert values['wsop_rebalancer_moves_total{result="done"}'] >= run["moved"]
        assert values['wsop_rebalancer_moves_total{result="failed"}'] == 0.0
        assert values['wsop_rebalancer_plan_load_connections{stat="max"}'] <= 44
        assert values['wsop_rebalancer_plan_load_connections{stat="mean"}'] == 40.0
        assert values["wsop_rebalancer_membership_changes_total"] >= 2

        # the leader goes away cleanly: it releases the Lease, the follower takes over
        a.stop()
        await until(lambda: b.elector.is_leader, timeout=10, what="pod-b taking over")
    finally:
        a.stop()
        b.stop()
    for r in requests_to(kmock, r".*/pods"):
        assert r.params.get("labelSelector") == "ws.operator/enabled=true"


def test_stop_reason_reaches_the_executor():
    """A leader that lost the Lease stops before its next move (the executor's hook)."""
    from wsop.k8s.executor import execute
    from wsop.k8s.plan import Move

    moves = [Move("acme", u, "a", "b", 1, "owner") for u in range(5)]
    done: list[int] = []

    class Target:
        def connections(self, member):  # pragma: no cover - not called
            raise AssertionError

        def move(self, member, tenant, user, to):
            done.append(user)
            return 1

    leading = iter([None, None, "lost the lease"])
    run = execute(moves, Target(), rate=1e6, stop=lambda: next(leading, "lost the lease"))
    assert done == [0, 1] and run.moved == 2
    assert run.aborted == "lost the lease" and run.not_attempted == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--local", "--watch", "--debounce", "-1"], "--debounce must be a number of seconds >= 0"),
        (["--local", "--watch", "--resync", "0"], "--resync must be a number of seconds > 0"),
        # non-finite: NaN passed `< 0` and printed as NaN in --json, inf never fired
        (["--local", "--watch", "--debounce", "nan"], "--debounce must be a number of seconds"),
        (["--local", "--watch", "--debounce", "inf"], "--debounce must be a number of seconds"),
        (["--local", "--watch", "--max-delay", "inf"], "--max-delay must be a number of seconds"),
        (["--local", "--watch", "--retry", "nan"], "--retry must be a number of seconds"),
        (["--local", "--watch", "--resync", "inf"], "--resync must be a number of seconds"),
        (["-n", NS, "--watch", "--lease-duration", "nan"], "--lease-duration must be a number"),
        (["--local", "--watch", "--metrics-port", "70000"], "--metrics-port must be 0–65535"),
        (["-n", NS, "--watch", "--lease-duration", "1"], "--lease-duration must be ≥ 3"),
    ],
)
def test_watch_flag_misuse_exits_2(args, message):
    from typer.testing import CliRunner

    from wsop.cli.main import app

    result = CliRunner().invoke(app, ["rebalance", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
