"""Real sidecar processes on loopback for the stack tests, and a tiny blocking client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from websockets.sync.client import ClientConnection, connect

from wsop.acl import bitmap, seed
from wsop.acl.dataset import TenantData
from wsop.acl.store import TenantStore
from wsop.local.redis_binary import free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
"""Every test stack's admin token (servers refuse to start without one)."""


def admin_get(url: str, timeout: float = 10.0) -> bytes:
    """GET an admin endpoint (`http://…/metrics`, a `ws://` base works too) with the token."""
    request = urllib.request.Request(
        url.replace("ws://", "http://", 1), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return resp.read()


@dataclass
class Proc:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_healthy(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing healthy on port {port}")


@dataclass
class Sidecars:
    redis_url: str
    members_file: Path
    env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)

    def write_members(self) -> None:
        doc = {
            "version": int(time.time() * 1000),
            "algo": "rendezvous",
            "sidecars": [
                {"name": p.name, "url": p.url, "pid": p.proc.pid} for p in self.procs.values()
            ],
        }
        tmp = self.members_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.members_file)

    def start(self, name: str, log_dir: Path, extra: list[str] | None = None) -> Proc:
        port = free_port()
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsop.cli.main",
                "sidecar",
                "--name",
                name,
                "--port",
                str(port),
                "--members-file",
                str(self.members_file),
                "--redis",
                self.redis_url,
                "--insecure",
                "--algo",
                "rendezvous",
                *(extra or []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WSOP_ADMIN_TOKEN": ADMIN_TOKEN, **self.env},
            cwd=ROOT,
        )
        log.close()
        self.procs[name] = Proc(name, port, proc)
        wait_healthy(port)
        return self.procs[name]

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.proc.poll() is None:
                p.proc.terminate()
        for p in self.procs.values():
            p.stop()


def client(url: str, tenant: str, user: int | str, since: str | None = None) -> ClientConnection:
    """A client of `tenant`/`user`; `since`: it reconnects with the last offset it saw."""
    catch_up = f"&since={quote(since)}" if since is not None else ""
    return connect(f"{url}/ws?tenant={tenant}&user={user}{catch_up}", open_timeout=5, legacy=True)


def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def drain(ws: ClientConnection, wait: float = 0.3) -> list[dict]:
    """Everything that arrives within `wait` seconds."""
    out = []
    while True:
        try:
            out.append(json.loads(ws.recv(timeout=wait)))
        except TimeoutError:
            return out


def drain_all(conns: Iterable[ClientConnection], wait: float = 0.3) -> list[list[dict]]:
    """What arrives on each of `conns` (in their order) until none of them has received
    anything for `wait` seconds: one quiet period for all of them, where `drain` in a
    loop would wait it out once per connection (40 connections, 20 s)."""
    conns = list(conns)
    out: list[list[dict]] = [[] for _ in conns]
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < wait:
        got = False
        for ws, frames in zip(conns, out, strict=True):
            while True:
                try:
                    frames.append(json.loads(ws.recv(timeout=0)))
                except TimeoutError:
                    break
                got = True
        if got:
            quiet_since = time.monotonic()
        else:
            time.sleep(0.005)
    return out


def seed_tenant(
    r: redis.Redis, name: str, teams: dict[str, Any], online: Iterable[int] | None = None
) -> None:
    """Seed one integer-id tenant: its teams (name -> member ids), and who is online."""
    online_ids = sorted(online) if online is not None else []
    data = TenantData(
        tenant=name,
        teams={t: bitmap.encode(sorted(m)) for t, m in teams.items()},
        online=bitmap.encode(online_ids) if online is not None else b"",
        memberships=sum(map(len, teams.values())),
        online_count=len(online_ids),
    )
    seed.seed(TenantStore(r), [data], False)


def start_lb(
    peers: str | Path,
    log: Path,
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """A real `wsop lb` (insecure clients, rendezvous), healthy: over fixed peers
    ("s0=ws://…,s1=…"), or following a members file (a Path)."""
    port = free_port()
    source = ["--members-file", str(peers)] if isinstance(peers, Path) else ["--peers", peers]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wsop.cli.main", "lb", "--port", str(port), *source]
            + ["--insecure", "--algo", "rendezvous", *(extra or [])],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "WSOP_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})},
        )
    wait_healthy(port)
    return proc, port


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def sidecars_behind_lb(
    redis_url: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    names: Iterable[str] = ("s0", "s1"),
    extra: list[str] | None = None,
    lb_args: Iterable[str] = (),
) -> Iterator[tuple[Sidecars, int]]:
    """Sidecars (s0 and s1 by default) on a members file and a real `wsop lb` over them:
    (sidecars, LB port); all stopped on exit, however the test ends. `env` goes to every
    process (a `WSOP_SECRET`), `extra` flags to the sidecars, `lb_args` to the LB (e.g.
    `--trunks 0`)."""
    sidecars = Sidecars(redis_url, tmp_path / "members.json", dict(env or {}))
    try:
        sidecars.write_members()
        for name in names:
            sidecars.start(name, tmp_path, extra)
        sidecars.write_members()
        time.sleep(0.8)
        peers = ",".join(f"{p.name}={p.url}" for p in sidecars.procs.values())
        proc, port = start_lb(peers, tmp_path / "lb.log", env, list(lb_args))
        try:
            yield sidecars, port
        finally:
            stop_process(proc)
    finally:
        sidecars.stop_all()
