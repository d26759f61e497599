"""Shared by the LB tests: stand-in sidecars, an in-process LB, clients, and relays on
fake transports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import ROOT
from tests.fakes import FakeConn
from wsop.auth import mint_token
from wsop.lb import LBConfig, LoadBalancer, Relay
from wsop.lb.frames import FrameScanner, text_frame
from wsop.lb.stats import LBStats
from wsop.local.redis_binary import free_port

SECRET = "s" * 32
ADMIN = "admin-token-for-tests"
ALGO = "rendezvous"  # maglev builds take ~0.5 s: one test covers the default
STANDIN = str(ROOT / "tests" / "standin_sidecar.py")


def wait_healthy(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.03)
    raise RuntimeError(f"nothing healthy on port {port}")


def start_standin(name: str, trunks: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "WSOP_ADMIN_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, STANDIN, "sidecar", "--name", name, "--port", str(port)],
        cwd=ROOT,
        env=env if trunks else {**env, "STANDIN_NO_TRUNKS": "1"},
    )
    wait_healthy(port)
    return proc, f"ws://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@asynccontextmanager
async def running_lb(source, **overrides) -> AsyncIterator[LoadBalancer]:
    config = LBConfig(
        host="127.0.0.1",
        port=free_port(),
        source=source,
        algo=ALGO,
        secret=SECRET,
        admin_token=ADMIN,
        drain_s=0.2,
        move_drain_s=0.5,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    lb = LoadBalancer(config)
    await lb.start()
    try:
        yield lb
        trunks = lb.trunks
        if trunks is not None and trunks.dial_failures == 0:  # (dead sidecars: direct dials)
            assert trunks.fallbacks == 0  # every sidecar leg went over a trunk
            assert lb.trunks.stats.errors == 0
    finally:
        await lb.stop()


def ws_url(lb: LoadBalancer, query: str = "") -> str:
    return f"ws://127.0.0.1:{lb.config.port}/ws{query}"


def token(tenant: str, user: int | str, **kw) -> str:
    return mint_token(SECRET, tenant, user, **kw)


async def dial(lb: LoadBalancer, tenant: str = "acme", user: int | str = 1) -> ClientConnection:
    return await connect(ws_url(lb, f"?token={token(tenant, user)}"), proxy=None)


def http_get(port: int, path: str, admin: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if admin:
        request.add_header("Authorization", f"Bearer {admin}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aget(port: int, path: str, admin: str | None = None) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, port, path, admin)


def unmasked_texts(stream: bytes) -> list[str]:
    """The text frames in a stream of masked client frames, unmasked."""
    from wsop.load.frames import OP_TEXT, FrameReader

    return [p.decode() for op, p in FrameReader().feed(stream) if op == OP_TEXT]


def masked(text: str) -> bytes:
    return text_frame(text, mask=True)


def plain(text: str) -> bytes:
    return text_frame(text, mask=False)


class Dialled(list[tuple[str, str | None]]):
    """(url, moved_from) per dial, and the connection each dial returned, by url."""

    conns: dict[str, FakeConn]


def fake_relay(**kw) -> tuple[Relay, FakeConn, FakeConn, Dialled]:
    client, upstream, dialled = FakeConn(), FakeConn(), Dialled()
    dialled.conns = {}

    async def dial(url: str, moved_from: str | None) -> FakeConn:
        dialled.append((url, moved_from))
        dialled.conns[url] = conn = FakeConn()
        return conn

    relay = Relay(client, upstream, "s0", dial, LBStats(), ("acme", 1), 0.2, **kw)  # type: ignore[arg-type]
    relay.start()
    return relay, client, upstream, dialled


class Recorder(FrameScanner):
    """Emits into a buffer and records what the hooks saw; asks for every boundary."""

    def __init__(self, intercept: bool) -> None:
        super().__init__(intercept)
        self.out = bytearray()
        self.controls: list[bytes] = []
        self.closes: list[bytes] = []
        self.boundaries: set[int] = set()
        self.want_boundary = True

    def emit(self, chunk: bytes) -> None:
        self.out += chunk

    def on_close(self, frame: bytes, payload: bytes) -> None:
        self.closes.append(payload)
        self.out += frame  # what a relay does with a close frame it forwards

    def on_control(self, payload: bytes) -> None:
        self.controls.append(payload)

    def on_boundary(self) -> None:
        self.boundaries.add(len(self.out))
