"""Kubernetes discovery, pods/proxy gathering and moves, and `wsop rebalance --namespace`,
with the real `kubernetes` client against kmock's emulated API server.

kmock serves in the test's event loop and the client is synchronous, so library calls
run in a worker thread (`asyncio.to_thread`). kmock ignores label selectors: the tests
assert them on the recorded requests instead.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wsop.cli.main import app
from wsop.errors import BackendError, UsageError
from wsop.k8s import client as k8s_client
from wsop.k8s.discovery import KubernetesMembership, discover, pod_state, ready_in_slices
from wsop.k8s.executor import MemberFailed, MoveRefused
from wsop.k8s.plan import Holding, plan_rebalance
from wsop.k8s.proxy import PodProxyTarget

NS = "chat"
SELECTOR = "ws.operator/enabled=true"
API_TOKEN = "api-token-123"
ADMIN = "admin-secret"
runner = CliRunner()


def pod(name: str, ip: str | None, ready: bool = True, deleting: bool = False, port: int = 9100):
    meta = {"name": name, "namespace": NS, "labels": {"ws.operator/enabled": "true"}}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip:
        status["podIP"] = ip
    spec = {
        "containers": [
            {"name": "app", "image": "app", "ports": [{"containerPort": 8080}]},
            {
                "name": "wsop-sidecar",
                "image": "w",
                "ports": [{"name": "wsop", "containerPort": port}],
            },
        ]
    }
    return {"metadata": meta, "spec": spec, "status": status}


def add_pods(kmock, *pods) -> None:
    for p in pods:
        kmock.objects["v1/pods", NS, p["metadata"]["name"]] = p


def kubeconfig(tmp_path: Path, server: str, context: str = "test") -> Path:
    path = tmp_path / "kubeconfig"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": API_TOKEN}}],
        "contexts": [{"name": context, "context": {"cluster": "kmock", "user": "me"}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def cluster_for(kmock) -> k8s_client.Cluster:
    return k8s_client.for_url(str(kmock.url), API_TOKEN, timeout=5)


def proxy_path(name: str, path: str, port: int = 9100) -> str:
    return f"/api/v1/namespaces/{NS}/pods/{name}:{port}/proxy/{path}"


def requests_to(kmock, pattern: str) -> list:
    return [r for r in kmock if re.fullmatch(pattern, r.url.path)]


async def wsop(*args: str):
    """Run the CLI in a thread (the emulated API serves from this event loop)."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


# --- pure readiness -----------------------------------------------------------------


def test_pod_state_readiness_rules():
    assert pod_state(pod("a", "10.0.0.1")).reason == "ready"
    assert pod_state(pod("a", None)).reason == "no IP"
    assert pod_state(pod("a", "10.0.0.1", deleting=True)).reason == "terminating"
    assert pod_state(pod("a", "10.0.0.1", ready=False)).reason.startswith("not Ready")
    assert not pod_state(pod("a", "10.0.0.1"), in_service={"b"}).ready
    assert pod_state(pod("a", "10.0.0.1", port=9300)).url == "ws://10.0.0.1:9300"
    bare = {"metadata": {"name": "x"}, "status": {"podIP": "1.2.3.4"}}
    assert pod_state(bare, default_port=7000).port == 7000


def test_ready_in_slices_treats_unset_as_ready_and_ignores_non_pods():
    slices = [
        {
            "endpoints": [
                {"targetRef": {"kind": "Pod", "name": "a"}, "conditions": {"ready": True}},
                {"targetRef": {"kind": "Pod", "name": "b"}, "conditions": {"ready": False}},
                {"targetRef": {"kind": "Pod", "name": "c"}, "conditions": {}},
                {"targetRef": {"kind": "Node", "name": "d"}},
            ]
        }
    ]
    assert ready_in_slices(slices) == {"a", "c"}


# --- discovery through the API ------------------------------------------------------


@pytest.mark.asyncio
async def test_discover_lists_pods_by_selector_and_endpoint_slices(kmock):
    add_pods(
        kmock,
        pod("ws-0", "10.0.0.10"),
        pod("ws-1", "10.0.0.11"),
        pod("ws-2", "10.0.0.12", ready=False),
        pod("ws-3", "10.0.0.13", deleting=True),
        pod("ws-4", None),
    )
    kmock.objects["discovery.k8s.io/v1/endpointslices", NS, "sidecars-x"] = {
        "metadata": {
            "name": "sidecars-x",
            "labels": {"kubernetes.io/service-name": "wsop-sidecars"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": ["10.0.0.10"],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": "ws-0", "namespace": NS},
            },
            {
                "addresses": ["10.0.0.11"],
                "conditions": {"ready": False},
                "targetRef": {"kind": "Pod", "name": "ws-1", "namespace": NS},
            },
        ],
    }
    found = await asyncio.to_thread(discover, cluster_for(kmock), NS, SELECTOR, "wsop-sidecars")
    assert found.members == {"ws-0": "ws://10.0.0.10:9100"}
    reasons = {p.name: p.reason for p in found.pods}
    assert reasons["ws-1"] == "not ready in the Service's EndpointSlices"
    assert reasons["ws-3"] == "terminating" and reasons["ws-4"] == "no IP"
    assert [p.name for p in found.reachable] == ["ws-0", "ws-1", "ws-2", "ws-3"]

    (pods_req,) = requests_to(kmock, f"/api/v1/namespaces/{NS}/pods")
    assert pods_req.params["labelSelector"] == SELECTOR
    assert pods_req.headers["Authorization"] == f"Bearer {API_TOKEN}"
    (slices_req,) = requests_to(kmock, f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices")
    assert slices_req.params["labelSelector"] == "kubernetes.io/service-name=wsop-sidecars"


@pytest.mark.asyncio
async def test_kubernetes_membership_follows_pods_and_keeps_the_last_good_list(kmock):
    add_pods(kmock, pod("ws-0", "10.0.0.10"))
    source = KubernetesMembership(cluster_for(kmock), NS, interval=0.01)
    assert await asyncio.to_thread(source.current) == {"ws-0": "ws://10.0.0.10:9100"}
    add_pods(kmock, pod("ws-1", "10.0.0.11"))
    changed = await asyncio.wait_for(source.wait_changed(), 5)
    assert set(changed) == {"ws-0", "ws-1"}

    (
        (kmock**10)["get", f"/api/v1/namespaces/{NS}/pods"]
        << 500
        << {"kind": "Status", "message": "etcd down"}
    )
    assert await asyncio.to_thread(source.current) == changed  # an API blip keeps the ring
    assert "etcd down" in (source.last_error or "")
    assert all(r.params.get("labelSelector") == SELECTOR for r in requests_to(kmock, r".*/pods"))


# --- pods/proxy ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pod_proxy_target_gets_connections_and_moves_with_the_admin_token(kmock):
    report = {
        "name": "ws-0",
        "connections": 3,
        "users": [
            {"tenant": "acme", "user": 7, "count": 2},
            {"tenant": "acme", "user": "x", "count": 1},
        ],
    }
    kmock["get", proxy_path("ws-0", "connections")] << report
    kmock["get", proxy_path("ws-0", "move")] << (lambda req: {"moved": 2})
    target = PodProxyTarget(cluster_for(kmock), NS, {"ws-0": 9100}, ADMIN)

    assert await asyncio.to_thread(target.connections, "ws-0") == report
    assert await asyncio.to_thread(target.move, "ws-0", "acme", 7, "ws-1") == 2

    (conn_req,) = requests_to(kmock, proxy_path("ws-0", "connections"))
    (move_req,) = requests_to(kmock, proxy_path("ws-0", "move"))
    assert conn_req.method == "GET" and move_req.method == "GET"
    assert dict(move_req.params) == {"tenant": "acme", "user": "7", "to": "ws-1"}
    # the API server authenticates (and strips) Authorization: it must carry *our* token;
    # the sidecar's token rides in its own header, never in the URL
    for req in (conn_req, move_req):
        assert req.headers["Authorization"] == f"Bearer {API_TOKEN}"
        assert req.headers["X-Wsop-Admin-Token"] == ADMIN
        assert ADMIN not in str(req.url)


@pytest.mark.asyncio
async def test_pod_proxy_failures_are_classified(kmock):
    kmock["get", proxy_path("down", "connections")] << 503 << b"error trying to reach service"
    kmock["get", proxy_path("old", "connections")] << 404 << b"no such endpoint: /connections"
    kmock["get", proxy_path("noauth", "connections")] << 401 << b"admin token required"
    kmock["get", proxy_path("garbage", "connections")] << b"<html>"
    forbidden = {
        "kind": "Status",
        "code": 403,
        "reason": "Forbidden",
        "message": 'pods "rbac" is forbidden: cannot get resource "pods/proxy"',
    }
    kmock["get", proxy_path("rbac", "connections")] << 403 << forbidden
    ports = dict.fromkeys(["down", "old", "noauth", "garbage", "rbac"], 9100)
    target = PodProxyTarget(cluster_for(kmock), NS, ports, ADMIN)

    kmock["get", proxy_path("down", "move")] << 404 << {"error": "no sidecar named 'ws-9'"}
    with pytest.raises(MoveRefused, match="no sidecar named"):  # membership lag: one move
        await asyncio.to_thread(target.move, "down", "acme", 1, "ws-9")
    for name, text in [
        ("down", "HTTP 503"),
        ("old", "404"),
        ("noauth", "admin token"),
        ("garbage", "not JSON"),
    ]:
        with pytest.raises(MemberFailed, match=text):
            await asyncio.to_thread(target.connections, name)
    with pytest.raises(BackendError, match=r"forbidden: cannot get pods/proxy in namespace 'chat'"):
        await asyncio.to_thread(target.connections, "rbac")


# --- wsop rebalance --namespace -----------------------------------------------------


def fleet(kmock, reports: dict[str, list[tuple[str, int, int]]], failing: set[str] = frozenset()):
    """Pods ws-0.. with /connections answering `reports`; /move answers what it moved."""
    for i, name in enumerate(sorted(reports)):
        add_pods(kmock, pod(name, f"10.0.0.{10 + i}"))
        users = [{"tenant": t, "user": u, "count": c} for t, u, c in reports[name]]
        if name in failing:
            kmock["get", proxy_path(name, "connections")] << 503 << b"connection refused"
        else:
            kmock["get", proxy_path(name, "connections")] << {"name": name, "users": users}
        counts = {(t, str(u)): c for t, u, c in reports[name]}
        kmock["get", proxy_path(name, "move")] << (
            lambda req, counts=counts: {"moved": counts[(req.params["tenant"], req.params["user"])]}
        )


def expected_plan(reports, members, epsilon=0.25, max_moves=1000, unavailable=()):
    holdings = [Holding(m, t, u, c) for m, rows in reports.items() for t, u, c in rows]
    return plan_rebalance("maglev", members, holdings, epsilon, max_moves, unavailable)


REPORTS = {
    "ws-0": [("acme", u, 1) for u in range(0, 40)] + [("globex", 5, 3)],
    "ws-1": [("acme", u, 1) for u in range(40, 46)],
    "ws-2": [],
}


@pytest.mark.asyncio
async def test_rebalance_plans_and_moves_through_the_api(kmock, tmp_path):
    fleet(kmock, REPORTS)
    config = kubeconfig(tmp_path, str(kmock.url))
    result = await wsop(
        "rebalance",
        "-n",
        NS,
        "--kubeconfig",
        str(config),
        "--admin-token",
        ADMIN,
        "--rate",
        "1000",
        "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    plan = expected_plan(REPORTS, sorted(REPORTS))
    assert doc["before"] == plan.before and doc["after"] == plan.after
    assert doc["moves"] == len(plan.moves) > 0
    assert doc["moved"] == len(plan.moves)
    assert doc["moved_connections"] == sum(m.count for m in plan.moves)
    assert doc["skipped_pods"] == [] and doc["errors"] == []
    assert doc["after"] <= 1.25 + 3 / 50

    sent = [
        (r.url.path.split("/")[-3].split(":")[0], dict(r.params), r.headers["X-Wsop-Admin-Token"])
        for r in requests_to(kmock, r".*/proxy/move")
    ]
    assert sent == [
        (m.source, {"tenant": m.tenant, "user": str(m.user), "to": m.target}, ADMIN)
        for m in plan.moves
    ]
    (pods_req,) = requests_to(kmock, f"/api/v1/namespaces/{NS}/pods")
    assert pods_req.params["labelSelector"] == SELECTOR


@pytest.mark.asyncio
async def test_dry_run_moves_nothing_and_prints_the_plan(kmock, tmp_path):
    fleet(kmock, REPORTS)
    config = kubeconfig(tmp_path, str(kmock.url))
    result = await wsop(
        "rebalance",
        "-n",
        NS,
        "-l",
        "app=chat,tier=ws",
        "--kubeconfig",
        str(config),
        "--dry-run",
        "--max-moves",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert requests_to(kmock, r".*/proxy/move") == []
    assert "would move 3/3 users" in result.stdout and "more over --max-moves" in result.stdout
    assert "ws-0" in result.stdout and "→" in result.stdout
    (pods_req,) = requests_to(kmock, f"/api/v1/namespaces/{NS}/pods")
    assert pods_req.params["labelSelector"] == "app=chat,tier=ws"


@pytest.mark.asyncio
async def test_a_pod_failing_mid_plan_is_skipped_and_reported(kmock, tmp_path):
    reports = {"ws-0": REPORTS["ws-0"], "ws-1": REPORTS["ws-1"], "ws-2": [], "ws-3": []}
    fleet(kmock, reports, failing={"ws-3"})  # ws-3 cannot even report its connections
    (kmock**10)["get", proxy_path("ws-0", "move")] << 500 << b"sidecar crashed"
    config = kubeconfig(tmp_path, str(kmock.url))
    result = await wsop(
        "rebalance", "-n", NS, "--kubeconfig", str(config), "--rate", "1000", "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    skipped = {s["name"]: s["reason"] for s in doc["skipped_pods"]}
    assert set(skipped) == {"ws-0", "ws-3"}
    assert "HTTP 503" in skipped["ws-3"] and "HTTP 500" in skipped["ws-0"]
    plan = expected_plan(reports, sorted(reports), unavailable=["ws-3"])
    first_fail = next(i for i, m in enumerate(plan.moves) if m.source == "ws-0")
    later = plan.moves[first_fail + 1 :]
    involving_0 = [m for m in later if "ws-0" in (m.source, m.target)]
    assert len(requests_to(kmock, proxy_path("ws-0", "move"))) == 1  # then ws-0 is skipped
    assert doc["errors"][0]["from"] == "ws-0" and "sidecar crashed" in doc["errors"][0]["error"]
    assert doc["not_attempted"] == len(involving_0) > 0
    assert doc["moved"] == len(plan.moves) - 1 - len(involving_0) > 0  # the rest went on
    assert not any(m.target == "ws-3" for m in plan.moves)


@pytest.mark.asyncio
async def test_no_matching_pods_names_namespace_and_selector(kmock, tmp_path):
    kmock.resources["v1/pods"] = {}  # declared, but no pod at all
    config = kubeconfig(tmp_path, str(kmock.url))
    result = await wsop("rebalance", "-n", NS, "-l", "tier=ws", "--kubeconfig", str(config))
    assert result.exit_code == 1
    assert "no pods match selector 'tier=ws' in namespace 'chat'" in result.stderr
    assert "context 'test'" in result.stderr


@pytest.mark.asyncio
async def test_rbac_forbidden_list_names_verb_and_resource(kmock, tmp_path):
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": 403,
        "reason": "Forbidden",
        "message": 'pods is forbidden: User "dev" cannot list resource "pods"',
    }
    kmock["get", f"/api/v1/namespaces/{NS}/pods"] << 403 << status
    config = kubeconfig(tmp_path, str(kmock.url))
    result = await wsop("rebalance", "-n", NS, "--kubeconfig", str(config))
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "forbidden: cannot list pods in namespace 'chat'" in line
    assert 'User "dev" cannot list' in line and "\n" not in line


@pytest.mark.asyncio
async def test_rbac_forbidden_pods_proxy_aborts_with_one_line(kmock, tmp_path):
    fleet(kmock, {"ws-0": [("acme", 1, 1)]})
    forbidden = {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "no proxy"}
    (kmock**10)["get", proxy_path("ws-0", "connections")] << 403 << forbidden
    config = kubeconfig(tmp_path, str(kmock.url))
    result = await wsop("rebalance", "-n", NS, "--kubeconfig", str(config))
    assert result.exit_code == 1
    assert "cannot get pods/proxy in namespace 'chat'" in result.stderr


@pytest.mark.asyncio
async def test_rejected_credentials_say_401_and_the_context(kmock, tmp_path):
    (
        kmock["get", f"/api/v1/namespaces/{NS}/pods"]
        << 401
        << {"kind": "Status", "code": 401, "message": "Unauthorized"}
    )
    config = kubeconfig(tmp_path, str(kmock.url), context="prod")
    result = await wsop("rebalance", "-n", NS, "--kubeconfig", str(config))
    assert result.exit_code == 1
    assert "rejected the credentials of context 'prod'" in result.stderr


def test_unreachable_api_names_the_context_and_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    config = kubeconfig(tmp_path, f"http://127.0.0.1:{port}", context="staging")
    result = runner.invoke(app, ["rebalance", "-n", NS, "--kubeconfig", str(config)])
    assert result.exit_code == 1
    assert "cannot reach the Kubernetes API" in result.stderr
    assert f"context 'staging' at http://127.0.0.1:{port}" in result.stderr
    assert "Connection refused" in result.stderr


def test_missing_kubeconfig_or_context_is_a_usage_error(tmp_path):
    missing = tmp_path / "nope"
    result = runner.invoke(app, ["rebalance", "-n", NS, "--kubeconfig", str(missing)])
    assert result.exit_code == 2
    assert f"kubeconfig not found: {missing}" in result.stderr
    config = kubeconfig(tmp_path, "http://127.0.0.1:1")
    result = runner.invoke(
        app, ["rebalance", "-n", NS, "--kubeconfig", str(config), "--context", "other"]
    )
    assert result.exit_code == 2
    assert "context 'other' not found" in result.stderr and "(contexts: test)" in result.stderr


@pytest.mark.parametrize(
    "text",
    ["garbage: [\n", "[]\n", "5\n", "contexts: 5\n", "contexts: [{name: a, context: 5}]\n"
     "current-context: a\n"],
)  # fmt: skip
def test_a_malformed_kubeconfig_is_one_line_exit_2(tmp_path, text):
    """Broken YAML was a multi-line ParserError, wrong shapes TypeError/AttributeError."""
    config = tmp_path / "kc"
    config.write_text(text)
    args = ["rebalance", "-n", NS, "--selector", "app=y", "--kubeconfig", str(config)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"kubeconfig {config}" in result.stderr and "internal error" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_no_kubeconfig_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UsageError, match="no kubeconfig"):
        k8s_client.connect()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --local or --namespace"),
        (["--local", "-n", NS], "exactly one of --local or --namespace"),
        (["--local", "--selector", "a=b"], "need --namespace"),
        (["-n", NS, "--rate", "0"], "--rate (moves per second) must be a finite number > 0"),
        (["--local", "--rate", "inf"], "--rate (moves per second) must be a finite number > 0"),
        (["--local", "--rate", "nan"], "--rate (moves per second) must be a finite number > 0"),
        (["--local", "--epsilon", "inf"], "--epsilon must be a finite number >= 0"),
        (["-n", NS, "--max-moves", "-1"], "--max-moves"),
    ],
)
def test_flag_misuse_exits_2(args, message):
    result = runner.invoke(app, ["rebalance", *args])
    assert result.exit_code == 2
    assert message in result.stderr
