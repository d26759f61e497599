"""The server side of bench/peers.py: Socket.IO's node processes, HAProxy and the extra
wsop LBs of `--lb-args`, started, checked and always stopped by pid.

Kept apart from the driver (the clients) and from bench/peers.py (what to run, the
report). node, npm and haproxy come from the machine (`make peers` installs Debian's
haproxy and nodejs where they are missing); the npm packages come from
bench/peers/package-lock.json into bench/peers/node_modules on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from wsop.adminclient import get_json
from wsop.local.redis_binary import free_port

PEERS_DIR = Path(__file__).resolve().parent / "peers"
NPM_TIMEOUT_S = 600


class Missing(RuntimeError):
    """Something the benchmark needs is not on this machine; the message says how to get it."""


def tool_versions() -> dict[str, str]:
    """node, npm and haproxy versions, or `Missing` naming the first one absent."""
    hints = {
        "node": "install Node.js ≥ 18 (`make peers`, or apt-get install -y nodejs npm)",
        "npm": "install npm (`make peers`, or apt-get install -y npm)",
        "haproxy": "install HAProxy (`make peers`, or apt-get install -y haproxy)",
    }
    versions = {}
    for tool, hint in hints.items():
        path = shutil.which(tool)
        if path is None:
            raise Missing(f"{tool} not found on PATH: {hint}")
        flag = "-v" if tool == "haproxy" else "--version"
        done = subprocess.run([path, flag], capture_output=True, text=True, timeout=30)
        first = (done.stdout or done.stderr).strip().splitlines()
        versions[tool] = first[0] if first else "?"
    return versions


def _installed_versions_match() -> bool:
    """True when node_modules holds exactly the versions package-lock.json pins."""
    lock = json.loads((PEERS_DIR / "package-lock.json").read_text())
    for where, meta in lock.get("packages", {}).items():
        if not where.startswith("node_modules/") or meta.get("optional"):
            continue
        manifest = PEERS_DIR / where / "package.json"
        try:
            if json.loads(manifest.read_text()).get("version") != meta.get("version"):
                return False
        except (OSError, ValueError):
            return False
    return True


def ensure_node_modules() -> bool:
    """`npm ci` into bench/peers/node_modules unless it already matches the lock file.

    Returns whether it installed. An unreachable registry is a `Missing` with npm's last
    words, not a traceback (npm retries once, 30 s a fetch).
    """
    if _installed_versions_match():
        return False
    npm = shutil.which("npm")
    if npm is None:
        raise Missing("npm not found on PATH: install npm (`make peers`, or apt-get install npm)")
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--fetch-retries=1", "--fetch-timeout=30000"],
            cwd=PEERS_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise Missing(
            f"npm ci in {PEERS_DIR} took over {NPM_TIMEOUT_S} s: is the npm registry reachable?"
        ) from None
    if done.returncode != 0 or not _installed_versions_match():
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit {done.returncode}"
        raise Missing(
            f"npm ci in {PEERS_DIR} failed (is the npm registry reachable?): {last[:200]}"
        )
    return True


# --- processes ------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the bench dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    """One peer process: its name, pid and loopback port."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_port(proc: subprocess.Popen[bytes], port: int, log: Path, what: str) -> None:
    """Until `port` accepts (30 s), or the process dies: then its log's tail is the error."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{what} exited ({proc.returncode}): {' | '.join(tail)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within 30 s (log: {log})")


@contextmanager
def _spawned(
    argv: list[str], log: Path, port: int, what: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Run `argv` (with `env` added to ours) with its cwd in the run's work dir (where
    its log and config live, and what a test's sweep looks for), until the `with` ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=log.parent, preexec_fn=_die_with_parent, env={**os.environ, **(env or {})},
        )  # fmt: skip
    try:
        _wait_port(proc, port, log, what)
        yield proc
    finally:
        _stop(proc)


@contextmanager
def socketio_nodes(redis_url: str, workdir: Path, count: int = 2) -> Iterator[list[Server]]:
    """`count` Socket.IO processes (bench/peers/server.js) on one Redis, stopped on exit."""
    node = shutil.which("node") or "node"
    with contextlib.ExitStack() as stack:
        servers = []
        for i in range(count):
            name, port = f"n{i}", free_port()
            argv = [node, "--expose-gc", str(PEERS_DIR / "server.js"), "--name", name,
                    "--port", str(port),
                    "--redis", redis_url]  # fmt: skip
            proc = stack.enter_context(
                _spawned(argv, workdir / f"{name}.log", port, f"Socket.IO node {name}")
            )
            servers.append(Server(name, port, proc))
        yield servers


def haproxy_config(port: int, backends: dict[str, int], maxconn: int, owners: Path | None) -> str:
    """HTTP mode (WebSocket upgrades become tunnels), one thread.

    Without `owners`: `balance url_param user` + `hash-type consistent` over all
    backends, the stickiness Socket.IO's docs ask of a balancer. With it: each user to
    the backend the map file names (wsop's ring owner), so the relay row's sidecars do
    exactly the work they do behind wsop's LB.
    """
    lines = [
        "global", "    nbthread 1", f"    maxconn {maxconn}",
        "defaults", "    mode http", f"    maxconn {maxconn}", "    timeout connect 5s",
        "    timeout client 600s", "    timeout server 600s", "    timeout tunnel 600s",
        "frontend clients", f"    bind 127.0.0.1:{port}",
    ]  # fmt: skip
    first = next(iter(backends))
    if owners is None:
        lines += ["    default_backend servers", "backend servers", "    balance url_param user",
                  "    hash-type consistent"]  # fmt: skip
        lines += [f"    server {name} 127.0.0.1:{p}" for name, p in backends.items()]
    else:
        lines.append(f"    use_backend %[url_param(user),map({owners},{first})]")
        for name, p in backends.items():
            lines += [f"backend {name}", f"    server {name} 127.0.0.1:{p}"]
    return "\n".join(lines) + "\n"


@contextmanager
def haproxy(
    name: str, backends: dict[str, int], workdir: Path, maxconn: int,
    owners: dict[int, str] | None = None,
) -> Iterator[Server]:  # fmt: skip
    """One foreground HAProxy (`-db`) on a free loopback port, stopped on exit."""
    port = free_port()
    owners_file = None
    if owners is not None:
        owners_file = workdir / f"{name}.map"
        owners_file.write_text("".join(f"{u} {b}\n" for u, b in sorted(owners.items())))
    config = workdir / f"{name}.cfg"
    config.write_text(haproxy_config(port, backends, maxconn, owners_file))
    argv = [shutil.which("haproxy") or "haproxy", "-db", "-f", str(config)]
    with _spawned(argv, workdir / f"{name}.log", port, f"HAProxy {name}") as proc:
        yield Server(name, port, proc)


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="wsop-bench-peers-") as path:
        yield Path(path)


@contextmanager
def extra_lb(
    stack_file: Path, algo: str, flags: list[str], workdir: Path, name: str,
    timeout: float = 30.0,
) -> Iterator[Server]:  # fmt: skip
    """One more `wsop lb --insecure FLAGS` following a private stack's members file (the
    same sidecars, the same Redis): a variant of wsop's LB (`--lb-args`) measured in the
    same run as the stack's own. Yields once it routes to every sidecar of the stack."""
    doc = json.loads(stack_file.read_text())
    want = {s["name"] for s in doc["sidecars"]}
    port = free_port()
    argv = [sys.executable, "-m", "wsop.cli.main", "lb", "--host", "127.0.0.1", "--port",
            str(port), "--members-file", str(stack_file), "--algo", algo, "--insecure",
            "--name", name, *flags]  # fmt: skip
    env = {"WSOP_ADMIN_TOKEN": doc["admin_token"]}
    what = f"wsop lb {shlex.join(flags)}"
    with _spawned(argv, workdir / f"{name}.log", port, what, env) as proc:
        deadline = time.monotonic() + timeout
        while True:
            got = get_json(f"http://127.0.0.1:{port}/connections", doc["admin_token"], 2.0)
            if isinstance(got, dict) and {s["name"] for s in got.get("sidecars", [])
                                          if s.get("url")} == want:  # fmt: skip
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} never routed to {sorted(want)} (log: {workdir})")
            time.sleep(0.05)
        yield Server(name, port, proc)
