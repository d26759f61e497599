"""`wsop rebalance --local --watch` end to end on the local stack: 3 sidecars and 240
clients, then `wsop scale --sidecars 4` — and the connections spread onto the new sidecar
without anyone running `wsop rebalance`. The watcher's JSON lines, its metrics port and
`wsop status` all have to agree; the clients stay connected and keep talking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.conftest import ROOT, run_wsop
from wsop.local.redis_binary import free_port

USERS = 240


def wsop_json(*args: str, env: dict[str, str]) -> dict:
    done = run_wsop(*args, "--json", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class Watcher:
    """The watch loop as a subprocess; its JSON lines collected by a thread."""

    def __init__(self, env: dict[str, str], metrics_port: int) -> None:
        args = [
            sys.executable, "-m", "wsop.cli.main", "rebalance", "--local", "--watch", "--json",
            "--debounce", "1", "--retry", "2", "--epsilon", "0.05", "--rate", "500",
            "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            cwd=ROOT,
        )
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def wait_for(self, predicate, timeout: float, what: str, since: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events)[since:]:
                if predicate(event):
                    return event
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        stderr = "" if self.proc.poll() is None else self.proc.stderr.read()
        raise AssertionError(f"no {what} in {self.events[-5:]} {stderr}")


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("wsop_rebalancer_")
    }


@pytest.mark.timeout(240)
def test_scale_up_is_rebalanced_without_anyone_running_a_command(redis_url: str) -> None:
    from websockets.sync.client import connect

    env = {"WSOP_REDIS_URL": redis_url}
    port, metrics_port = free_port(), free_port()
    wsop_json("up", "--detach", "--insecure", "--sidecars", "3", "--port", str(port), env=env)
    watcher = Watcher(env, metrics_port)
    clients = {}
    try:
        lb = f"ws://127.0.0.1:{port}/ws"
        clients = {u: connect(f"{lb}?tenant=t0&user={u}", legacy=True) for u in range(USERS)}
        watcher.wait_for(lambda e: e["event"] == "started", 30, "start")
        first = watcher.wait_for(lambda e: e["event"] == "run", 30, "first run")
        assert len(first["members"]) == 3  # (ε 0.05 may already move a few off a full owner)
        time.sleep(1.5)  # any retry of that first run has happened
        since = len(watcher.events)

        wsop_json("scale", "--sidecars", "4", env=env)  # and nothing else

        run = watcher.wait_for(  # (a busy machine may still show a run over the first
            # membership after `since`: the one to check is over all four)
            lambda e: (
                e["event"] == "run"
                and e["moved"] > 0
                and e["errors"] == 0
                and len(e["members"]) == 4
            ),
            90,
            "a run that moved connections",
            since,
        )
        assert "+s3" in run["reason"] or "retry" in run["reason"]
        assert run["before"] > 1.1 and run["after"] <= 1.1
        settled = watcher.wait_for(
            lambda e: e["event"] == "run" and e["misplaced_after"] == 0 and len(e["members"]) == 4,
            60,
            "a run that left nothing misplaced",
            since,
        )
        assert settled["after"] <= 1.1

        status = wsop_json("status", env=env)
        loads = {s["name"]: s["connections"] for s in status["sidecars"]}
        assert sum(loads.values()) == USERS  # nobody was dropped
        assert loads["s3"] >= USERS / 4 * 0.9 and max(loads.values()) <= USERS / 4 * 1.1

        values = metrics(metrics_port)
        assert values["wsop_rebalancer_leader"] == 1.0  # local: no election, it always acts
        assert values["wsop_rebalancer_members"] == 4.0
        assert values["wsop_rebalancer_misplaced_connections"] == 0.0
        assert values['wsop_rebalancer_moves_total{result="done"}'] >= run["moved"]
        assert values["wsop_rebalancer_membership_changes_total"] >= 2

        # the moved clients still talk: a message to every 10th user arrives
        for to in range(0, USERS, 10):
            sender = clients[(to + 1) % USERS]
            sender.send(json.dumps({"type": "direct", "to": to, "data": to, "id": f"m{to}"}))
            while True:
                frame = json.loads(clients[to].recv(timeout=10))
                if frame["type"] == "message":
                    assert frame["data"] == to
                    break

        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.proc.wait(20) == 0
        time.sleep(0.2)
        assert watcher.events[-1]["event"] == "stopped"
    finally:
        if watcher.proc.poll() is None:
            watcher.proc.kill()
            watcher.proc.wait()
        for ws in clients.values():
            ws.close()
        run_wsop("down", env=env, timeout=60)


def test_a_closed_stdout_ends_the_watch_quietly_and_at_once(redis_url: str) -> None:
    """`wsop rebalance --local --watch --json | head -1`: the lease thread's next line hit
    a closed pipe (a BrokenPipeError traceback in thread rebalancer-lease) and the watch
    ran on until the main thread's next write. Now it ends within a second or two, with
    the quiet exit of every command whose reader went away."""
    standin = f"{sys.executable} {ROOT / 'tests' / 'standin_sidecar.py'}"
    env = {"WSOP_SIDECAR_CMD": standin}
    wsop_json(
        "up", "--detach", "--sidecars", "2", "--port", str(free_port()), "--redis", redis_url,
        "--insecure", env=env,
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsop.cli.main", "rebalance", "--local", "--watch", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env}, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())["event"] == "started"
        proc.stdout.close()  # what `head -1` does after its line
        began = time.monotonic()
        code = proc.wait(timeout=10)
        assert time.monotonic() - began < 3
        assert code == 1
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        run_wsop("down", env=env)
