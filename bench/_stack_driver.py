"""The asyncio load driver of bench/stack.py: pipelined senders, one reader per
connection, a ledger of every message (sent, acked, delivered, lost), and per-process
CPU, kernel share and syscalls over each timed window.

Kept apart from bench/stack.py (which decides what to run and reports it) so each stays
readable; nothing here knows which server it is measuring.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from _common import percentile_ms, proc_cpu_times
from websockets.asyncio.client import ClientConnection, connect


def proc_syscalls(pid: int) -> int:
    """Read + write system calls of one process so far (/proc/<pid>/io syscr + syscw).

    The profiles say most server CPU is spent in the kernel and the event loop, per
    frame; syscalls per message is the count that moves when writes are coalesced.
    """
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    fields = dict(line.split(": ") for line in text.splitlines())
    return int(fields["syscr"]) + int(fields["syscw"])


def machine_busy_seconds() -> float:
    """CPU-seconds all cores spent busy since boot (/proc/stat): shows who else ran.

    The machine is shared; what the bench's own processes did not use of the busy time
    ("others" in the report) is contention the absolute msgs/s numbers suffered.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def start_py_spy(
    spy: tuple[str, str], pids: dict[str, int], seconds: float
) -> list[subprocess.Popen[bytes]]:
    """One `py-spy record --format raw` per server process (collapsed stacks, greppable)."""
    directory, label = spy
    exe = Path(sys.executable).with_name("py-spy")
    procs = []
    for name, pid in pids.items():
        if name in ("redis", "driver"):
            continue
        out = Path(directory) / f"{label}-{name}.txt"
        procs.append(
            subprocess.Popen(
                [
                    str(exe),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(max(1, int(seconds))),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        )
    return procs


# --- the driver -----------------------------------------------------------------------


@dataclass
class Counters:
    """What the readers saw; latency samples are kept only while `recording`."""

    sent: int = 0
    acks: int = 0
    ack_delivered: int = 0
    deliveries: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    wrong_count: int = 0
    recording: bool = False
    ack_ns: list[int] = field(default_factory=list)
    delivery_ns: list[int] = field(default_factory=list)

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.sent, self.acks, self.deliveries, self.errors


@dataclass
class Client:
    """One driver connection: its socket, its unacked messages, its send window."""

    ws: ClientConnection
    user: int
    to: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    window: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))


FrameMaker = Callable[[Client, str, int], str]


async def open_clients(
    base: str, tenant: str | None, users: list[int], concurrency: int = 64
) -> list[Client]:
    """Connect one client per user (via the LB's insecure `?tenant=&user=`), bounded."""
    gate = asyncio.Semaphore(concurrency)

    async def one(user: int) -> Client:
        url = f"{base}/ws?tenant={tenant}&user={user}" if tenant else f"{base}/"
        async with gate:
            ws = await connect(
                url, compression=None, open_timeout=30, ping_interval=None,
                max_size=None, proxy=None,
            )  # fmt: skip
        return Client(ws, user)

    return list(await asyncio.gather(*(one(u) for u in users)))


async def wind_down(
    senders: list[asyncio.Task[Any]],
    settle: Callable[[], Awaitable[None]],
    spies: list[subprocess.Popen[bytes]],
) -> None:
    """End a timed phase: stop the senders, let what is in flight land, and wait for the
    py-spy recordings of the window to be written (bench/peers.py's driver too)."""
    for t in senders:
        t.cancel()
    await asyncio.gather(*senders, return_exceptions=True)
    await settle()
    for proc in spies:
        await asyncio.to_thread(proc.wait)


class HasWebSocket(Protocol):
    ws: ClientConnection


async def close_clients(clients: Sequence[HasWebSocket], concurrency: int = 256) -> None:
    """Close every connection, `concurrency` handshakes at a time (bench/peers.py too)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(c: HasWebSocket) -> None:
        async with gate:
            await c.ws.close()

    await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)


class Driver:
    """Readers on every client for the driver's whole life; senders per phase.

    Each reader parses every frame it gets: an `ack` (or, from the echo server, the
    echoed frame itself) frees a window slot and gives send→ack latency; a `message`
    gives send→receive latency at the recipient (the send time travels as `data`, and
    sender and recipient share this process's clock).
    """

    def __init__(self, clients: list[Client], expect_delivered: int, echo: bool) -> None:
        self.clients = clients
        self.expect = expect_delivered
        self.echo = echo
        self.c = Counters()
        self._readers = [asyncio.create_task(self._read(c)) for c in clients]

    async def _read(self, client: Client) -> None:
        c = self.c
        loads, clock = json.loads, time.perf_counter_ns
        async for raw in client.ws:
            now = clock()
            obj = loads(raw)
            kind = obj["type"]
            if kind == "message" or self.echo:
                c.deliveries += 1
                if c.recording:
                    c.delivery_ns.append(now - obj["data"])
            if kind == "message":
                continue
            sent = client.pending.pop(obj.get("id"), None)
            if sent is None:
                continue
            client.window.release()
            if kind == "error":
                c.errors += 1
                code = str(obj.get("code"))
                c.error_codes[code] = c.error_codes.get(code, 0) + 1
                continue
            c.acks += 1
            delivered = obj.get("delivered", 1)
            c.ack_delivered += delivered
            c.wrong_count += delivered != self.expect
            if c.recording:
                c.ack_ns.append(now - sent)

    async def _send(self, client: Client, make: FrameMaker, prefix: str) -> None:
        c, window, clock, seq = self.c, client.window, time.perf_counter_ns, 0
        while True:
            await window.acquire()
            seq += 1
            mid = f"{prefix}{seq}"
            now = clock()
            client.pending[mid] = now
            await client.ws.send(make(client, mid, now))
            c.sent += 1

    async def phase(
        self,
        senders: list[Client],
        make: FrameMaker,
        window: int,
        warmup_s: float,
        seconds: float,
        pids: dict[str, int],
        spy: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send with `window` in flight per sender; measure the last `seconds` of it.

        `spy`: (directory, row label) to record py-spy profiles of the servers over the
        timed window (the sampler costs CPU: numbers from such a run are not the table's).
        """
        c = self.c
        for s in senders:
            s.window = asyncio.Semaphore(window)
        tasks = [
            asyncio.create_task(self._send(s, make, f"{i}.{time.monotonic_ns()}."))
            for i, s in enumerate(senders)
        ]
        await asyncio.sleep(warmup_s)
        c.ack_ns, c.delivery_ns = [], []
        times0 = {name: proc_cpu_times(pid) for name, pid in pids.items()}
        busy0 = machine_busy_seconds()
        sys0 = {name: proc_syscalls(pid) for name, pid in pids.items()}
        before, t0 = c.snapshot(), time.perf_counter()
        c.recording = True
        spies = start_py_spy(spy, pids, seconds) if spy else []
        await asyncio.sleep(seconds)
        c.recording = False
        after, wall = c.snapshot(), time.perf_counter() - t0
        times = {name: proc_cpu_times(pid) for name, pid in pids.items()}
        cpu = {name: times[name][0] - times0[name][0] for name in pids}
        kernel = {name: times[name][1] - times0[name][1] for name in pids}
        syscalls = {name: proc_syscalls(pid) - sys0[name] for name, pid in pids.items()}
        cpu["machine"] = machine_busy_seconds() - busy0
        cpu["others"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine"))
        await wind_down(tasks, self.settle, spies)
        return {
            "wall_s": wall,
            "acks": after[1] - before[1],
            "deliveries": after[2] - before[2],
            "errors": after[3] - before[3],
            "cpu_s": cpu,
            "kernel_s": kernel,
            "syscalls": syscalls,
            "ack_p50_ms": percentile_ms(c.ack_ns, 50),
            "ack_p99_ms": percentile_ms(c.ack_ns, 99),
            "delivery_p50_ms": percentile_ms(c.delivery_ns, 50),
            "delivery_p99_ms": percentile_ms(c.delivery_ns, 99),
        }

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait for every in-flight message to be acked and every delivery to land."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(cl.pending for cl in self.clients) and (
                self.echo or self.c.deliveries >= self.c.ack_delivered
            ):
                return
            await asyncio.sleep(0.05)

    def ledger(self) -> dict[str, int]:
        """Whole-run accounting after `settle`: every acked delivery must have arrived."""
        c = self.c
        unacked = sum(len(cl.pending) for cl in self.clients)
        expected = c.acks if self.echo else c.ack_delivered
        return {
            "sent": c.sent,
            "acked": c.acks,
            "errors": c.errors,
            "error_codes": dict(c.error_codes),
            "unacked": unacked,
            "ack_count_mismatch": c.wrong_count,
            "expected_deliveries": expected,
            "delivered": c.deliveries,
            "lost": max(0, expected - c.deliveries),
        }

    async def close(self) -> None:
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await close_clients(self.clients)


# --- the rows -------------------------------------------------------------------------
