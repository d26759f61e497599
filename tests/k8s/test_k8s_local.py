"""The executor on its own (rate, skips, aborts) and `wsop rebalance --local` against
stand-in sidecars that serve `/connections` and `/move` over plain HTTP."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from wsop.cli.main import app
from wsop.errors import BackendUnavailable
from wsop.k8s.executor import MemberFailed, MoveRefused, execute, gather, parse_connections
from wsop.k8s.plan import Holding, Move, plan_rebalance
from wsop.local import stack_file

ADMIN = "local-admin"
runner = CliRunner()


class Fleet:
    """Shared state of the stand-in sidecars: (tenant, user) -> {sidecar: count}."""

    def __init__(self) -> None:
        self.where: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        self.seen: list[tuple[str, str, dict[str, str], str]] = []
        self.lock = threading.Lock()

    def report(self, name: str) -> dict:
        users = [
            {"tenant": t, "user": int(u), "count": per[name]}
            for (t, u), per in sorted(self.where.items())
            if per.get(name)
        ]
        return {"name": name, "connections": sum(u["count"] for u in users), "users": users}

    def move(self, name: str, tenant: str, user: str, to: str) -> int:
        per = self.where[(tenant, user)]
        moved = per.pop(name, 0)
        if moved:
            per[to] = per.get(to, 0) + moved
        return moved


def serve_sidecar(fleet: Fleet, name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            auth = self.headers.get("Authorization", "")
            with fleet.lock:
                fleet.seen.append((name, url.path, params, auth))
                if auth != f"Bearer {ADMIN}":
                    status, body = 401, {"error": "admin token required"}
                elif url.path == "/connections":
                    status, body = 200, fleet.report(name)
                elif url.path == "/move":
                    moved = fleet.move(name, params["tenant"], params["user"], params["to"])
                    status, body = 200, {"moved": moved}
                else:
                    status, body = 404, {"error": "no such endpoint"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def local_stack() -> Iterator[tuple[Fleet, dict[str, ThreadingHTTPServer]]]:
    fleet = Fleet()
    servers = {name: serve_sidecar(fleet, name) for name in ("s0", "s1", "s2")}
    procs = [
        stack_file.ProcRecord(name, f"ws://127.0.0.1:{srv.server_address[1]}", 1)
        for name, srv in servers.items()
    ]
    record = stack_file.StackRecord(
        algo="rendezvous",
        insecure=True,
        redis_url="redis://127.0.0.1:1/0",
        admin_token=ADMIN,
        lb=stack_file.ProcRecord("lb", "ws://127.0.0.1:1", 1),
        sidecars=tuple(procs),
    )
    stack_file.save(record)
    yield fleet, servers
    for srv in servers.values():
        srv.shutdown()
        srv.server_close()


def seed(fleet: Fleet) -> None:
    for u in range(30):  # everyone on s0
        fleet.where[("acme", str(u))] = {"s0": 1 + u % 2}


def test_local_rebalance_moves_users_to_their_targets(local_stack):
    fleet, _ = local_stack
    seed(fleet)
    result = runner.invoke(app, ["rebalance", "--local", "--rate", "1000", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["moves"] == doc["moved"] > 0 and doc["errors"] == []
    total = sum(sum(per.values()) for per in fleet.where.values())
    loads: dict[str, int] = defaultdict(int)
    for per in fleet.where.values():
        assert len(per) == 1  # every user's connections sit on one sidecar
        (where,) = per
        loads[where] += per[where]
    for m in doc["plan"]:
        assert set(fleet.where[(m["tenant"], str(m["user"]))]) == {m["to"]}
    assert max(loads.values()) <= doc["capacity"]
    assert doc["after"] == round(max(loads.values()) / (total / 3), 6) < doc["before"]
    assert all(auth == f"Bearer {ADMIN}" for *_, auth in fleet.seen)
    moves = [(n, p) for n, path, p, _ in fleet.seen if path == "/move"]
    assert moves == [
        (m["from"], {"tenant": m["tenant"], "user": str(m["user"]), "to": m["to"]})
        for m in doc["plan"]
    ]


def test_local_rebalance_skips_a_dead_sidecar_and_reports_it(local_stack):
    fleet, servers = local_stack
    seed(fleet)
    servers["s2"].shutdown()
    servers["s2"].server_close()
    result = runner.invoke(app, ["rebalance", "--local", "--rate", "1000", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (skipped,) = doc["skipped_pods"]
    assert skipped["name"] == "s2" and "unreachable" in skipped["reason"]
    assert not any(m["to"] == "s2" for m in doc["plan"])
    assert doc["moved"] == doc["moves"] > 0


def test_local_dry_run_prints_a_table_and_moves_nothing(local_stack):
    fleet, _ = local_stack
    seed(fleet)
    result = runner.invoke(app, ["rebalance", "--local", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would move" in result.stdout and "s0" in result.stdout
    assert not any(path == "/move" for _, path, _, _ in fleet.seen)


def test_local_without_a_stack_is_one_line_exit_1():
    result = runner.invoke(app, ["rebalance", "--local"])
    assert result.exit_code == 1
    assert "no local stack running" in result.stderr


# --- the executor alone -------------------------------------------------------------


class FakeTarget:
    def __init__(self, fail: dict[int, Exception] | None = None) -> None:
        self.calls: list[tuple[str, str, str | int, str]] = []
        self.fail = fail or {}

    def connections(self, member: str):
        if member == "bad":
            raise MemberFailed(member, "HTTP 502")
        return {"users": [{"tenant": "t", "user": 1, "count": 2}]}

    def move(self, member, tenant, user, to) -> int:
        self.calls.append((member, tenant, user, to))
        exc = self.fail.get(len(self.calls))
        if exc is not None:
            raise exc
        return 1


def moves(n: int) -> list[Move]:
    return [Move("t", u, f"a{u % 2}", "b", 1, "owner") for u in range(n)]


def test_execute_paces_moves_at_the_rate():
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    progress: list[tuple[int, int]] = []
    run = execute(
        moves(5),
        FakeTarget(),
        rate=10,
        clock=lambda: now[0],
        sleep=sleep,
        progress=lambda done, total, mv, err: progress.append((done, total)),
    )
    assert run.moved == 5 and run.moved_connections == 5
    assert sleeps == pytest.approx([0.1] * 4)
    assert progress == [(i, 5) for i in range(1, 6)]


def test_execute_skips_a_failed_member_and_keeps_going():
    target = FakeTarget({1: MemberFailed("a0", "HTTP 500"), 2: MoveRefused("HTTP 400 bad user")})
    run = execute(moves(6), target, rate=1e9, sleep=lambda s: None)
    assert run.skipped_pods == {"a0": "HTTP 500"}
    assert [c[0] for c in target.calls] == ["a0", "a1", "a1", "a1"]  # a0's later moves skipped
    assert run.moved == 2 and run.not_attempted == 2
    assert [e["error"] for e in run.errors] == ["HTTP 500", "HTTP 400 bad user"]


def test_execute_stops_when_the_api_goes_away_and_says_so():
    target = FakeTarget({2: BackendUnavailable("cannot reach the Kubernetes API")})
    run = execute(moves(5), target, rate=1e9, sleep=lambda s: None)
    assert run.moved == 1 and run.not_attempted == 4 and len(target.calls) == 2
    assert run.aborted == "cannot reach the Kubernetes API"


def test_gather_skips_members_that_fail():
    got = gather(FakeTarget(), ["a", "bad", "c"])
    assert got.skipped == {"bad": "HTTP 502"}
    assert got.connections == {"a": 2, "c": 2}
    assert got.holdings == [Holding("a", "t", 1, 2), Holding("c", "t", 1, 2)]


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {"users": "x"},
        {"users": [{"tenant": 1, "user": 2}]},
        {"users": [{"tenant": "t"}]},
        {"users": [{"tenant": "t", "user": 1, "count": -1}]},
    ],
)
def test_malformed_connections_answers_fail_the_member(doc):
    with pytest.raises(MemberFailed, match="/connections"):
        parse_connections(doc, "s0")


def test_the_plan_the_executor_gets_is_the_planner_s():
    """Sanity link between the two halves: execute() applies moves in plan order."""
    holdings = [Holding("a", "t", u, 1) for u in range(20)]
    plan = plan_rebalance("rendezvous", ["a", "b"], holdings, epsilon=0.0)
    target = FakeTarget()
    execute(plan.moves, target, rate=1e9, sleep=lambda s: None)
    assert target.calls == [(m.source, m.tenant, m.user, m.target) for m in plan.moves]
