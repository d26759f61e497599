"""The client side of bench/peers.py: one asyncio driver that speaks to wsop and to
Socket.IO with the same code, so both servers get the same clients at the same cost.

Only the dialect differs, and it is a few string formats: wsop's JSON frames
(`{"type":"direct",…}` → `{"type":"ack",…}` + `{"type":"message",…}`) or Engine.IO v4 /
Socket.IO v5 packets over a WebSocket (`0{…}` open, `40` connect, `42N["direct",{…}]` →
`43N["id"]` + `42["message",{…}]`, `2` ping → `3` pong). Everything else — senders,
readers, the per-message ledger, the timed CPU window — is shared.

A message is in flight until its ack *and* every expected delivery have arrived; the
max-rate senders keep a fixed window of such messages, so both servers are held to the
same definition of done (Socket.IO acks at emit time, wsop after delivery: counting on
acks alone would let Socket.IO run ahead). What never completes is reported as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _common import proc_cpu_ns, proc_cpu_times
from _stack_driver import (
    close_clients,
    machine_busy_seconds,
    proc_syscalls,
    start_py_spy,
    wind_down,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

MSG, ACK, ERR, PING, OTHER = range(5)


class Wsop:
    """wsop's wire protocol (docs/protocol.md), via the LB's insecure `?tenant=&user=`."""

    name = "wsop"

    @staticmethod
    def url(base: str, tenant: str, user: int, teams: str) -> str:
        return f"{base}/ws?tenant={tenant}&user={user}"

    @staticmethod
    async def greet(ws: ClientConnection) -> str | None:
        return None  # the server speaks first only when there is something to say

    @staticmethod
    def direct(to: int, mid: str, seq: int, now: int) -> str:
        return f'{{"type":"direct","to":{to},"data":{now},"id":"{mid}"}}'

    @staticmethod
    def team(team: str, mid: str, seq: int, now: int) -> str:
        return f'{{"type":"team","teams":["{team}"],"data":{now},"id":"{mid}"}}'

    @staticmethod
    def parse(raw: str | bytes) -> tuple[int, Any, Any]:
        obj = json.loads(raw)
        kind = obj["type"]
        if kind == "message":
            return MSG, obj["id"], obj["data"]
        if kind == "ack":
            return ACK, obj["id"], obj.get("delivered")
        if kind == "error":
            return ERR, obj.get("id"), obj.get("code")
        return OTHER, None, obj


class SocketIO:
    """Engine.IO v4 + Socket.IO v5 over a WebSocket, the way socket.io-client talks once
    it skips long-polling (`transports: ["websocket"]`). The open packet's session id
    starts with the node's name (bench/peers/server.js), which is how a client learns
    where HAProxy put it."""

    name = "socket.io"

    @staticmethod
    def url(base: str, tenant: str, user: int, teams: str) -> str:
        return (
            f"{base}/socket.io/?EIO=4&transport=websocket&tenant={tenant}&user={user}&teams={teams}"
        )

    @staticmethod
    async def greet(ws: ClientConnection) -> str | None:
        opened = await ws.recv()
        if not isinstance(opened, str) or not opened.startswith("0{"):
            raise RuntimeError(f"Engine.IO: expected an open packet, got {opened!r:.80}")
        sid = json.loads(opened[1:])["sid"]
        await ws.send("40")
        connected = await ws.recv()
        if not isinstance(connected, str) or not connected.startswith("40"):
            raise RuntimeError(f"Socket.IO: expected a connect packet, got {connected!r:.80}")
        return str(sid).rsplit("-", 1)[0]

    @staticmethod
    def direct(to: int, mid: str, seq: int, now: int) -> str:
        return f'42{seq}["direct",{{"to":{to},"data":{now},"id":"{mid}"}}]'

    @staticmethod
    def team(team: str, mid: str, seq: int, now: int) -> str:
        return f'42{seq}["team",{{"teams":["{team}"],"data":{now},"id":"{mid}"}}]'

    @staticmethod
    def parse(raw: str | bytes) -> tuple[int, Any, Any]:
        if isinstance(raw, bytes):
            return OTHER, None, raw
        if raw.startswith("42["):
            obj = json.loads(raw[2:])[1]
            return MSG, obj["id"], obj["data"]
        if raw.startswith("43"):
            arg = json.loads(raw[raw.index("[") :])[0]
            if isinstance(arg, dict):
                return ERR, arg.get("id"), arg.get("error")
            return ACK, arg, None
        if raw == "2":
            return PING, None, None
        return OTHER, None, raw


Dialect = type[Wsop] | type[SocketIO]


@dataclass(eq=False)
class Conn:
    """One client connection; `node` is the server process that holds the user."""

    ws: ClientConnection
    user: int
    index: int
    node: str | None = None
    to: int = -1
    seq: int = 0
    window: asyncio.Semaphore | None = None


async def open_conns(
    dialect: Dialect,
    base: str,
    tenant: str,
    users: list[int],
    teams: str = "",
    concurrency: int = 64,
) -> list[Conn]:
    """Connect (and, for Socket.IO, join the namespace) one client per user, bounded."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, user: int) -> Conn:
        async with gate:
            ws = await connect(
                dialect.url(base, tenant, user, teams), compression=None, open_timeout=60,
                ping_interval=None, max_size=None, proxy=None,
            )  # fmt: skip
            node = await asyncio.wait_for(dialect.greet(ws), 60)
        return Conn(ws, user, index, node)

    return list(await asyncio.gather(*(one(i, u) for i, u in enumerate(users))))


FrameMaker = Callable[[Conn, str, int, int], str]
"""(sender, message id, sequence number, send time in ns) → the frame to send."""


class Driver:
    """Readers on every connection for the driver's life; senders per phase.

    `pending[mid]` = [deliveries still owed, ack still owed (0/1), send time, sender]:
    a message leaves it (and frees its sender's window slot) once both reach zero.
    """

    def __init__(self, dialect: Dialect, conns: list[Conn], fanout: int) -> None:
        self.dialect = dialect
        self.conns = conns
        self.fanout = fanout
        self.pending: dict[str, list[Any]] = {}
        self.sent = self.acks = self.deliveries = self.completed = 0
        self.errors = self.unexpected = self.ack_mismatch = 0
        self.failures: list[str] = []
        self.recording = False
        self.delivery_ns: list[int] = []
        self.ack_ns: list[int] = []
        self._readers = [asyncio.create_task(self._read(c)) for c in conns]

    async def _read(self, conn: Conn) -> None:
        try:
            await self._read_frames(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a closed or broken connection: the ledger must say so
            self.failures.append(f"user {conn.user}: {type(exc).__name__}: {exc}")

    async def _read_frames(self, conn: Conn) -> None:
        parse, pending, clock = self.dialect.parse, self.pending, time.perf_counter_ns
        async for raw in conn.ws:
            now = clock()
            kind, mid, value = parse(raw)
            if kind == MSG:
                self.deliveries += 1
                if self.recording:
                    self.delivery_ns.append(now - value)
                entry = pending.get(mid)
                if entry is None or entry[0] == 0:
                    self.unexpected += 1
                    continue
                entry[0] -= 1
                if entry[0] == 0 and entry[1] == 0:
                    self._complete(mid, entry)
            elif kind == ACK:
                entry = pending.get(mid)
                if entry is None or entry[1] == 0:
                    self.unexpected += 1
                    continue
                entry[1] = 0
                self.acks += 1
                if value is not None and value != self.fanout:
                    self.ack_mismatch += 1
                if self.recording:
                    self.ack_ns.append(now - entry[2])
                if entry[0] == 0:
                    self._complete(mid, entry)
            elif kind == ERR:
                self.errors += 1
                entry = pending.pop(mid, None)
                if entry is not None and entry[3].window is not None:
                    entry[3].window.release()
            elif kind == PING:
                await conn.ws.send("3")

    def _complete(self, mid: str, entry: list[Any]) -> None:
        del self.pending[mid]
        self.completed += 1
        if entry[3].window is not None:
            entry[3].window.release()

    async def _send(self, conn: Conn, make: FrameMaker) -> None:
        conn.seq += 1
        mid = f"{conn.index}.{conn.seq}"
        now = time.perf_counter_ns()
        self.pending[mid] = [self.fanout, 1, now, conn]
        self.sent += 1
        await conn.ws.send(make(conn, mid, conn.seq, now))

    async def _windowed(self, conn: Conn, make: FrameMaker) -> None:
        assert conn.window is not None
        with contextlib.suppress(ConnectionClosed):  # (the run is being torn down)
            while True:
                await conn.window.acquire()
                await self._send(conn, make)

    async def _paced(self, senders: list[Conn], make: FrameMaker, rate: float) -> None:
        """`rate` messages/s in all, round-robin over the senders, whatever comes back."""
        started, sent, turn = time.perf_counter(), 0, 0
        with contextlib.suppress(ConnectionClosed):  # (the run is being torn down)
            while True:
                due = int((time.perf_counter() - started) * rate) - sent
                for _ in range(due):
                    await self._send(senders[turn % len(senders)], make)
                    turn += 1
                sent += max(0, due)
                await asyncio.sleep(0.002)

    async def phase(
        self,
        senders: list[Conn],
        make: FrameMaker,
        *,
        window: int | None,
        rate: float | None,
        warmup_s: float,
        seconds: float,
        pids: dict[str, int],
        spy: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """Load for `warmup_s + seconds` (windowed if `window`, else paced at `rate`);
        measure the last `seconds`; then wait until nothing is in flight.

        Returns the window's counts, each process's CPU (`cpu_s`: run time, ns-precise;
        `kernel_s`/`stat_cpu_s`: from /proc/<pid>/stat ticks), syscalls, the machine's
        busy CPU-seconds, and the raw latency samples (ns) for the caller to pool."""
        for c in self.conns:
            c.window = None
        if window is not None:
            for s in senders:
                s.window = asyncio.Semaphore(window)
            tasks = [asyncio.create_task(self._windowed(s, make)) for s in senders]
        else:
            assert rate is not None
            tasks = [asyncio.create_task(self._paced(senders, make, rate))]
        await asyncio.sleep(warmup_s)
        self.delivery_ns, self.ack_ns = [], []
        cpu0 = {n: proc_cpu_ns(p) for n, p in pids.items()}
        times0 = {n: proc_cpu_times(p) for n, p in pids.items()}
        sys0 = {n: proc_syscalls(p) for n, p in pids.items()}
        busy0 = machine_busy_seconds()
        acks0, deliveries0, t0 = self.acks, self.deliveries, time.perf_counter()
        self.recording = True
        spies = start_py_spy(spy, pids, seconds) if spy else []
        await asyncio.sleep(seconds)
        self.recording = False
        wall = time.perf_counter() - t0
        acks, deliveries = self.acks - acks0, self.deliveries - deliveries0
        cpu = {n: (proc_cpu_ns(p) - cpu0[n]) / 1e9 for n, p in pids.items()}
        times = {n: proc_cpu_times(p) for n, p in pids.items()}
        syscalls = {n: proc_syscalls(p) - sys0[n] for n, p in pids.items()}
        busy = machine_busy_seconds() - busy0
        await wind_down(tasks, self.settle, spies)
        return {
            "wall_s": wall,
            "msgs": acks,
            "deliveries": deliveries,
            "cpu_s": cpu,
            "kernel_s": {n: times[n][1] - times0[n][1] for n in pids},
            "stat_cpu_s": {n: times[n][0] - times0[n][0] for n in pids},
            "syscalls": syscalls,
            "machine_busy_s": busy,
            "delivery_ns": self.delivery_ns,
            "ack_ns": self.ack_ns,
        }

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait (bounded) until every message sent so far has completed or failed."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def ledger(self) -> dict[str, int]:
        """Whole-life accounting after `settle`: what is still owed is lost."""
        return {
            "sent": self.sent,
            "acked": self.acks,
            "errors": self.errors,
            "unacked": sum(e[1] for e in self.pending.values()),
            "ack_count_mismatch": self.ack_mismatch,
            "expected_deliveries": (self.sent - self.errors) * self.fanout,
            "delivered": self.deliveries,
            "lost": sum(e[0] for e in self.pending.values()),
            "unexpected": self.unexpected,
            "broken_connections": len(self.failures),
        }

    async def close(self) -> None:
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await close_clients(self.conns)
