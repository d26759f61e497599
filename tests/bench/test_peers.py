"""bench/peers.py: wsop against Socket.IO 4 + HAProxy.

The pure parts (pairing, the ABBA order, the two dialects' parsers, HAProxy's config,
the ratios and the loss check) are tested here without any server. The quick mode then
runs for real — a wsop stack, two node processes, two HAProxies, two redis-servers —
when node, npm and haproxy are on the machine (`make peers` installs them), with one
extra LB (`--lb-args`), and must lose nothing, report every ratio (the extra LB's too)
and leave no process behind, also when it is stopped half-way by SIGTERM. It checks no
performance figure: the machine is shared, the figures live in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import kill_matching

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import _peers_report as report  # noqa: E402
import _peers_servers as servers  # noqa: E402
import _peers_workloads as workloads  # noqa: E402
import peers  # noqa: E402
from _peers_driver import ACK, ERR, MSG, PING, Conn, SocketIO, Wsop  # noqa: E402


def conns_on(sides: dict[str, int]) -> list[Conn]:
    out, user = [], 0
    for node, count in sides.items():
        for _ in range(count):
            out.append(Conn(ws=None, user=user, index=user, node=node))  # type: ignore[arg-type]
            user += 1
    return out


@pytest.mark.parametrize("sides", [{"a": 32, "b": 32}, {"a": 40, "b": 24}, {"a": 47, "b": 17},
                                   {"a": 17, "b": 47}, {"a": 5, "b": 59}])  # fmt: skip
def test_pairs_are_a_derangement_with_half_of_them_across(sides: dict[str, int]) -> None:
    conns = conns_on(sides)
    crossing = workloads.pair_across(conns, random.Random(3))
    node = {c.user: c.node for c in conns}
    targets = [c.to for c in conns]
    assert sorted(targets) == sorted(c.user for c in conns), "everyone receives exactly once"
    assert all(c.to != c.user for c in conns)
    assert crossing == sum(node[c.user] != node[c.to] for c in conns)
    assert crossing == 2 * min(len(conns) // 4, *sides.values())
    if min(sides.values()) >= 16:
        assert crossing == len(conns) // 2


def test_pairing_refuses_users_all_on_one_process() -> None:
    with pytest.raises(RuntimeError, match="1 process"):
        workloads.pair_across(conns_on({"a": 64}), random.Random(1))


def test_the_dialects_read_what_the_servers_send() -> None:
    assert Wsop.parse('{"type":"message","from":1,"data":7,"id":"3.4","ts":1}') == (MSG, "3.4", 7)
    assert Wsop.parse('{"type":"ack","id":"3.4","delivered":50}') == (ACK, "3.4", 50)
    assert Wsop.parse('{"type":"error","id":"3.4","code":"forbidden"}')[:2] == (ERR, "3.4")
    msg = '42["message",{"from":1,"teams":["fan50"],"data":9,"id":"0.1","ts":2}]'
    assert SocketIO.parse(msg) == (MSG, "0.1", 9)
    assert SocketIO.parse('4317["0.1"]') == (ACK, "0.1", None)
    assert SocketIO.parse('432[{"error":"forbidden","id":"0.2"}]') == (ERR, "0.2", "forbidden")
    assert SocketIO.parse("2")[0] == PING
    frame = SocketIO.direct(5, "0.1", 17, 123)
    assert frame == '4217["direct",{"to":5,"data":123,"id":"0.1"}]'
    assert json.loads(Wsop.team("fan50", "1.2", 2, 9)) == {
        "type": "team", "teams": ["fan50"], "data": 9, "id": "1.2"
    }  # fmt: skip


def test_haproxy_hashes_consistently_on_the_user_with_one_thread(tmp_path: Path) -> None:
    text = servers.haproxy_config(9000, {"n0": 9001, "n1": 9002}, 6000, None)
    for line in ("nbthread 1", "balance url_param user", "hash-type consistent",
                 "server n0 127.0.0.1:9001", "server n1 127.0.0.1:9002"):  # fmt: skip
        assert line in text
    routed = servers.haproxy_config(9000, {"s0": 9001, "s1": 9002}, 6000, tmp_path / "o.map")
    assert f"use_backend %[url_param(user),map({tmp_path / 'o.map'},s0)]" in routed
    assert "backend s1" in routed and "balance" not in routed


def test_abba_puts_every_system_symmetrically_around_the_middle() -> None:
    assert workloads.abba_order(("A", "B"), 1) == ["A", "B", "B", "A"]
    assert workloads.abba_order(("A", "B", "C"), 2) == list("ABCCBA" * 2)
    order = workloads.abba_order(("A", "B", "C"), 1)
    middle = (len(order) - 1) / 2
    for x in "ABC":  # each system's mean position is the middle: a linear drift cancels
        where = [i for i, y in enumerate(order) if y == x]
        assert sum(where) / len(where) == middle


def _row(workload: str, system: str, **figures: float) -> dict:
    return {"workload": workload, "system": system, **figures}


def test_an_idle_row_whose_rss_fell_is_reported_unmeasured_not_negative() -> None:
    idle = {
        "wsop": {"total_bytes_per_conn": 10 * 1024},
        "socket.io": {"total_bytes_per_conn": -3 * 1024},
    }
    (got,) = report.ratios([], idle)
    assert got["ratio"] is None and got["goal_met"] is None
    assert got["note"] == report.IDLE_NOT_MEASURED


def test_ratios_and_goals() -> None:
    rows = [
        _row("team max", "wsop", server_us_per_delivery=30.0, deliveries_per_s=20_000),
        _row("team max", "socket.io", server_us_per_delivery=20.0, deliveries_per_s=30_000),
        _row("relay", "wsop", us_per_msg={"lb": 11.0}),
        _row("relay", "haproxy relay", us_per_msg={"haproxy": 10.0}),
    ]
    idle = {
        "wsop": {"total_bytes_per_conn": 10 * 1024},
        "socket.io": {"total_bytes_per_conn": 25 * 1024},
    }
    got = {r["name"]: r for r in report.ratios(rows, idle)}
    assert set(got) == {
        "team max: CPU per delivery",
        "team max: deliveries/s",
        "idle: KB per connection",
        "relay: LB ÷ HAProxy CPU per relayed message",
    }
    assert got["team max: CPU per delivery"]["ratio"] == pytest.approx(1.5)
    assert got["team max: CPU per delivery"]["goal_met"] is False
    assert got["team max: deliveries/s"]["goal_met"] is False
    assert got["idle: KB per connection"]["ratio"] == pytest.approx(0.4)
    assert got["idle: KB per connection"]["goal_met"] is True
    assert got["relay: LB ÷ HAProxy CPU per relayed message"]["goal_met"] is True  # 1.1 ≤ 1.1


def test_an_extra_lb_gets_its_own_ratios_against_the_same_peers() -> None:
    v = "wsop --trunks 4"
    rows = [
        _row("team max", "wsop", server_us_per_delivery=30.0, deliveries_per_s=20_000),
        _row("team max", v, server_us_per_delivery=15.0, deliveries_per_s=40_000),
        _row("team max", "socket.io", server_us_per_delivery=20.0, deliveries_per_s=30_000),
        _row("relay", "wsop", us_per_msg={"lb": 11.0}),
        _row("relay", v, us_per_msg={"lb": 5.0}),
        _row("relay", "haproxy relay", us_per_msg={"haproxy": 10.0}),
    ]
    idle = {k: {"total_bytes_per_conn": kb * 1024} for k, kb in
            (("wsop", 10), (v, 8), ("socket.io", 25))}  # fmt: skip
    got = {r["name"]: r for r in report.ratios(rows, idle, [v])}
    assert got["team max: CPU per delivery"]["ratio"] == pytest.approx(1.5)
    mine = got[f"team max: CPU per delivery [{v}]"]
    assert mine["ratio"] == pytest.approx(0.75) and mine["goal_met"] is True
    assert got[f"team max: deliveries/s [{v}]"]["goal_met"] is True
    assert got[f"idle: KB per connection [{v}]"]["ratio"] == pytest.approx(8 / 25)
    assert got[f"relay: LB ÷ HAProxy CPU per relayed message [{v}]"]["ratio"] == pytest.approx(0.5)
    assert len(got) == 8


def test_a_single_lost_delivery_fails_the_ledger() -> None:
    clean = {"sent": 2, "acked": 2, "errors": 0, "unacked": 0, "ack_count_mismatch": 0,
             "expected_deliveries": 100, "delivered": 100, "lost": 0, "unexpected": 0,
             "broken_connections": 0}  # fmt: skip
    assert peers.lost_anything({"team wsop": clean}) == []
    lost = {**clean, "delivered": 99, "lost": 1}
    assert peers.lost_anything({"team wsop": clean, "team socket.io": lost}) == [
        "team socket.io: {'lost': 1}"
    ]
    assert peers.lost_anything({"x": {**clean, "delivered": 99}})  # a count that disagrees


def _bench(*args: str, env: dict[str, str], timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / "peers.py"), *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def _env(tmp_path: Path, path: str | None = None) -> dict[str, str]:
    """Every temp file of the run (its work dir, Redis dirs, wsop's state) under tmp_path,
    so a process left behind is one whose cwd or command line names it."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    if path is not None:
        env["PATH"] = path
    return env


def test_missing_tools_are_one_clear_line(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    done = _bench("--quick", env=_env(tmp_path, str(bare)), timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: node not found on PATH: install Node.js ≥ 18 (`make peers`, or apt-get install "
        "-y nodejs npm)"
    ]
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        for tool, real in (("node", node), ("npm", npm)):
            (bare / tool).symlink_to(real)
        done = _bench("--quick", env=_env(tmp_path, str(bare)), timeout=60)
        assert done.returncode == 1
        assert done.stderr.strip().startswith("error: haproxy not found on PATH")
        assert "Traceback" not in done.stderr


def test_bad_workloads_flag_is_a_usage_error(tmp_path: Path) -> None:
    done = _bench("--workloads", "direct,bogus", env=_env(tmp_path), timeout=60)
    assert done.returncode == 2
    assert "--workloads: choose from idle,direct,relay,team" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("flags", "said"),
    [("", "give extra `wsop lb` flags"), ("'--trunks", "No closing quotation"),
     ("--a --a", None)],
)  # fmt: skip
def test_bad_lb_args_are_a_usage_error(tmp_path: Path, flags: str, said: str | None) -> None:
    args = [f"--lb-args={flags}"] * (2 if said is None else 1)
    done = _bench(*args, "--quick", env=_env(tmp_path), timeout=60)
    assert done.returncode == 2, done.stderr
    assert (said or "the same flags twice") in done.stderr
    assert "Traceback" not in done.stderr


def _peers_ready() -> None:
    """Skip (with the reason) unless the real run can happen on this machine."""
    try:
        servers.tool_versions()
        servers.ensure_node_modules()
    except servers.Missing as exc:
        pytest.skip(str(exc))


EXTRA = "--drain-seconds 1"
"""A harmless LB flag: the extra-LB path (`--lb-args`) runs without waiting for trunks."""


@pytest.mark.timeout(240)
def test_quick_run_loses_nothing_and_reports_every_ratio(tmp_path: Path) -> None:
    _peers_ready()
    started = time.monotonic()
    done = _bench("--quick", "--json", "--idle-conns", "200", f"--lb-args={EXTRA}",
                  env=_env(tmp_path), timeout=200)  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert doc["ok"] is True
    variant = f"wsop {EXTRA}"
    systems = ("wsop", variant, "socket.io")
    assert set(doc["ledgers"]) == {f"{w} {s}" for w in ("direct", "team") for s in systems} | {
        "direct wsop", "direct haproxy relay"
    }  # fmt: skip
    for name, ledger in doc["ledgers"].items():
        assert ledger["lost"] == ledger["unacked"] == ledger["errors"] == 0, name
        assert ledger["unexpected"] == ledger["broken_connections"] == 0, name
        assert ledger["delivered"] == ledger["expected_deliveries"] > 0, name
        assert doc["completeness"][name] == 1.0
    assert [r["name"] for r in doc["ratios"]] == report.RATIO_NAMES + [
        f"{name} [{variant}]" for name in report.RATIO_NAMES
    ]
    for r in doc["ratios"]:
        if r["ratio"] is None and r["name"].startswith("idle"):  # (noise of --quick: said so)
            assert r["note"] == report.IDLE_NOT_MEASURED and r["goal_met"] is None, r
            continue
        assert r["ratio"] is not None and r["ratio"] > 0, r
    rows = {(r["workload"], r["system"]) for r in doc["rows"]}
    assert rows == {
        (w, s) for w in ("direct max", "direct fixed", "team max", "team fixed") for s in systems
    } | {("relay", "wsop"), ("relay", variant), ("relay", "haproxy relay")}  # fmt: skip
    for r in doc["rows"]:
        assert r["phases"] == 2, "ABBA: each system runs twice"
        assert r["msgs"] > 0 and r["server_cpu_s"] > 0
        if r["workload"].startswith("direct"):
            assert r["cross_fraction"] == 0.5
    assert set(doc["idle"]) == set(systems)
    assert kill_matching(str(tmp_path)) == [], "the run left a process behind"
    print(f"quick run: {elapsed:.1f} s (its own count: {doc['seconds']} s)")


@pytest.mark.timeout(120)
def test_sigterm_half_way_stops_everything_it_started(tmp_path: Path) -> None:
    _peers_ready()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "peers.py"), "--quick", "--workloads", "direct"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "direct max" in line:  # every server is up and loaded
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert "interrupted: every process this run started has been stopped" in rest
    assert "Traceback" not in rest
    assert kill_matching(str(tmp_path)) == [], "SIGTERM left a process behind"
