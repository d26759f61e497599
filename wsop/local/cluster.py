"""A real local Redis Cluster on loopback: N masters, created with `redis-cli --cluster create`.

Used by the tests (and handy for trying the cluster code path by hand): it is the same
software and the same protocol as production, only on one machine.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from wsop.errors import BackendUnavailable
from wsop.local.redis_binary import find_binary, start_server


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_ports(count: int) -> list[int]:
    """Ports whose cluster-bus twins (port + 10000) are free as well."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 29999)
        if port not in ports and _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    return ports


@dataclass
class LocalCluster:
    ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_cluster(workdir: Path, masters: int = 3, timeout: float = 30.0) -> LocalCluster:
    cluster = LocalCluster(_cluster_ports(masters))
    try:
        for port in cluster.ports:
            node_dir = workdir / f"node-{port}"
            cluster.procs.append(
                start_server(
                    port,
                    node_dir,
                    extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
                )
            )
        create = [
            find_binary("redis-cli"),
            "--cluster",
            "create",
            *[f"127.0.0.1:{p}" for p in cluster.ports],
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise BackendUnavailable(f"redis-cli --cluster create failed: {done.stdout[-500:]}")
        _wait_ok(cluster.ports, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_ok(ports: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for port in ports:
            info = redis.Redis(port=port).cluster("info")
            states.append(info.get("cluster_state") if isinstance(info, dict) else None)
        if all(s == "ok" for s in states):
            return
        time.sleep(0.1)
    raise BackendUnavailable(f"local cluster on {ports} never reached cluster_state:ok")
