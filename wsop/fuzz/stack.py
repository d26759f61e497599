"""A throw-away stack for fuzzing: N real `wsop sidecar` processes and one real `wsop lb`
in front of them, on loopback, each logging to its own file.

Real processes, not in-process servers: a fuzzer must be able to crash them, and "no
server process crashed, no traceback in any server log" is only worth asserting about
the processes that run in production. The caller owns the Redis server (a test
fixture, or bench/_common's private one) and the directory the logs go to.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

from wsop.acl import bitmap, seed
from wsop.acl.dataset import TenantData
from wsop.acl.store import TenantStore
from wsop.local.redis_binary import free_port

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass
class FuzzStack:
    """Sidecars `s0..` and the LB (`lb`), started by `start`, stopped by `stop`."""

    redis_url: str
    workdir: Path
    sidecars: list[Server] = field(default_factory=list)
    lb: Server | None = None
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    """The stack's own (servers refuse to start without one)."""
    sidecar_args: list[str] = field(default_factory=list)
    """Extra flags for every sidecar."""

    @property
    def servers(self) -> list[Server]:
        return [*self.sidecars, *([self.lb] if self.lb else [])]

    def start(self, sidecars: int = 2) -> FuzzStack:
        """Start everything and wait until each process answers /healthz; on any failure
        stop what was started (the caller gets the exception, and no orphan)."""
        ports = {f"s{i}": free_port() for i in range(sidecars)}
        peers = ",".join(f"{name}=ws://127.0.0.1:{port}" for name, port in ports.items())
        try:
            for name, port in ports.items():
                self.sidecars.append(
                    self._spawn(name, port, ["sidecar", "--name", name, "--port", str(port)]
                                + ["--peers", peers, "--redis", self.redis_url, "--insecure"]
                                + self.sidecar_args)
                )  # fmt: skip
            lb_port = free_port()
            self.lb = self._spawn("lb", lb_port, ["lb", "--port", str(lb_port), "--peers", peers]
                                  + ["--insecure"])  # fmt: skip
            for server in self.servers:
                wait_healthy(server)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, port: int, args: list[str]) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wsop.cli.main", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "WSOP_ADMIN_TOKEN": self.admin_token},
                cwd=ROOT,
            )
        return Server(name, port, proc, log)

    def crashed(self) -> dict[str, int]:
        """{name: exit status} of every server that is no longer running."""
        return {s.name: s.proc.returncode for s in self.servers if s.proc.poll() is not None}

    def cpu_seconds(self) -> dict[str, float]:
        """{name: user + system CPU seconds so far} of each running server (/proc)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for server in self.servers:
            try:
                stat = Path(f"/proc/{server.proc.pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
            out[server.name] = round((int(fields[11]) + int(fields[12])) / tick, 2)
        return out

    def tracebacks(self) -> dict[str, list[str]]:
        """{name: the log lines around each "Traceback"} for every server log with one."""
        found: dict[str, list[str]] = {}
        for server in self.servers:
            try:
                lines = server.log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            hits = [i for i, line in enumerate(lines) if "Traceback" in line]
            if hits:
                found[server.name] = ["\n".join(lines[max(0, i - 1) : i + 12]) for i in hits]
        return found

    def stop(self) -> None:
        """SIGTERM everything (the graceful path is part of what is tested), SIGKILL what
        has not exited 15 s later."""
        for server in self.servers:
            if server.proc.poll() is None:
                server.proc.terminate()
        for server in self.servers:
            try:
                server.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


def wait_healthy(server: Server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{server.port}/healthz"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited during start-up; log: {server.log}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not answer {url} within {timeout:.0f} s")


def seed_tenants(redis_url: str, tenants: dict[str, dict[str, set[int]]]) -> None:
    """Write each tenant's teams ({tenant: {team: members}}), replacing what was there."""
    client = redis.Redis.from_url(redis_url)
    try:
        data = [
            TenantData(
                tenant=tenant,
                teams={team: bitmap.encode(sorted(members)) for team, members in teams.items()},
                online=b"",
                memberships=sum(map(len, teams.values())),
                online_count=0,
            )
            for tenant, teams in tenants.items()
        ]
        seed.seed(TenantStore(client), data, True)
    finally:
        client.close()
