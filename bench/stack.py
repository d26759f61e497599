"""Stack throughput: messages/s, latency, CPU per message and memory per idle connection.

One asyncio driver (websockets client on uvloop) measures three servers the same way:

(a) a bare websockets echo server: the floor, what one recv + one send costs in this
    library with our settings (compression off, uvloop, same `serve` arguments);
(b) direct messages through the LB and 2 sidecars (a private stack: its own state dir,
    its own redis-server, started with `wsop up --detach --insecure --sidecars 2`);
(c) team messages fanned out 1→50 (one tenant, one 50-member team, all 50 online).

The driver is pipelined (every sender connection keeps a window of messages in flight),
so throughput is bounded by the machine, not by round trips. Absolute msgs/s depend on
how the cores are shared between the driver and the servers; the CPU-seconds each
server process is charged per message (/proc/<pid>/stat over the timed window) do not,
which is why the targets are stated per CPU-second:

- ≥ 30K messages per sidecar CPU-second (all sidecars' CPU summed);
- the LB's CPU per message ≤ 20% of the sidecars';
- ≤ 20 KB RSS (LB + sidecars) per idle connection with 5K connections open.

    .venv/bin/python bench/stack.py            # ~70 s on 2 cores
    .venv/bin/python bench/stack.py --quick    # < 30 s smoke test
    .venv/bin/python bench/stack.py --json     # one JSON document on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
from _common import (
    machine_note,
    percentile_ms,
    private_redis,
    proc_cpu_seconds,
    proc_kernel_seconds,
    proc_rss_bytes,
)
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect

from wsop import protocol
from wsop.acl import bitmap, seed
from wsop.acl.dataset import TenantData
from wsop.acl.store import TenantStore
from wsop.ring import build

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python bench/stack.py"
DIRECT_TENANT, TEAM_TENANT, IDLE_TENANT = "bench-dm", "bench-team", "bench-idle"
TEAM, TEAM_SIZE = "fan50", 50
TARGET_MSGS_PER_CPU_S = 30_000
TARGET_LB_SHARE = 0.20
TARGET_BYTES_PER_CONN = 20 * 1024


@dataclass(frozen=True)
class Profile:
    """Sizes of one run; `quick` keeps the whole run under 30 s."""

    name: str
    warmup_s: float
    seconds: float
    unloaded_s: float
    idle_conns: int
    direct_conns: int
    window: int
    team_senders: int
    team_window: int
    py_spy_dir: str | None = None
    """When set, py-spy samples the LB and each server process in every loaded window."""


FULL = Profile("full", 2.0, 10.0, 3.0, 5000, 64, 4, 10, 2)
QUICK = Profile("quick", 0.5, 2.5, 1.0, 1000, 32, 4, 6, 2)


# --- processes ------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one; children spawned later inherit it.

    5K clients cost 5K fds here, 10K in the LB (client + upstream) and 2.5K a sidecar.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _echo_main() -> None:
    """The (a) server: the sidecar's own `serve` settings, and nothing else per frame."""
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    server = await serve(
        echo,
        "127.0.0.1",
        0,
        max_size=protocol.DEFAULT_MAX_FRAME_BYTES,
        compression=None,
        ping_interval=30,
        close_timeout=2,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


@contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    """(url, pid) of an echo server in a child process (this file, `--echo-server`)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--echo-server"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"ws://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Stack:
    """A private `wsop up` stack: its members file, read back for urls and pids."""

    env: dict[str, str]
    state: Path
    lb_url: str = ""
    algo: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    def wsop(self, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "wsop.cli.main", *args, "--json"],
            capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"wsop {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
        return json.loads(done.stdout)

    def up(self, sidecars: int, redis_url: str) -> None:
        port = free_port()
        self.wsop("up", "--detach", "--insecure", "--sidecars", str(sidecars),
                  "--port", str(port), "--redis", redis_url)  # fmt: skip
        doc = json.loads((self.state / "stack.json").read_text())
        self.lb_url, self.algo = doc["lb"]["url"], doc["algo"]
        self.pids = {"lb": doc["lb"]["pid"], **{s["name"]: s["pid"] for s in doc["sidecars"]}}

    @property
    def sidecar_pids(self) -> dict[str, int]:
        return {k: v for k, v in self.pids.items() if k != "lb"}


@contextmanager
def private_stack(sidecars: int, redis_url: str) -> Iterator[Stack]:
    """`wsop up` in a temp WSOP_STATE_DIR (never the developer's stack), `wsop down` after."""
    with tempfile.TemporaryDirectory(prefix="wsop-bench-stack-") as state:
        env = {k: v for k, v in os.environ.items() if k not in ("WSOP_SECRET", "WSOP_REDIS_URL")}
        env["WSOP_STATE_DIR"] = state
        stack = Stack(env, Path(state))
        try:
            stack.up(sidecars, redis_url)
            yield stack
        finally:
            if (Path(state) / "stack.json").exists():
                try:
                    stack.wsop("down")
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"warning: {exc}; stopping the stack's pids directly", file=sys.stderr)
                    stop_pids(list(stack.pids.values()))


def stop_pids(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM the processes this bench started (by pid), SIGKILL what outlives `timeout`.

    The fallback when `wsop down` itself cannot run: a benchmark must not leave its
    private LB and sidecars behind.
    """
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(proc_rss_bytes(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if proc_rss_bytes(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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


def free_port() -> int:
    from wsop.local.redis_binary import free_port as pick

    return pick()


def seed_team(r: redis.Redis, tenant: str, team: str, members: range) -> None:
    """One tenant with one team, as `wsop seed` writes it (staged, then swapped in)."""
    data = TenantData(
        tenant=tenant,
        teams={team: bitmap.encode(list(members))},
        online=b"",
        memberships=len(members),
        online_count=0,
    )
    seed.seed(TenantStore(r), [data], True)


# --- the driver -----------------------------------------------------------------------


@dataclass
class Counters:
    """What the readers saw; latency samples are kept only while `recording`."""

    sent: int = 0
    acks: int = 0
    ack_delivered: int = 0
    deliveries: int = 0
    errors: int = 0
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


def direct_frame(c: Client, mid: str, now_ns: int) -> str:
    return f'{{"type":"direct","to":{c.to},"data":{now_ns},"id":"{mid}"}}'


def team_frame(c: Client, mid: str, now_ns: int) -> str:
    return f'{{"type":"team","teams":["{TEAM}"],"data":{now_ns},"id":"{mid}"}}'


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


async def close_clients(clients: list[Client], concurrency: int = 256) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(c: Client) -> None:
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
        cpu0 = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
        kernel0 = {name: proc_kernel_seconds(pid) for name, pid in pids.items()}
        busy0 = machine_busy_seconds()
        sys0 = {name: proc_syscalls(pid) for name, pid in pids.items()}
        before, t0 = c.snapshot(), time.perf_counter()
        c.recording = True
        spies = start_py_spy(spy, pids, seconds) if spy else []
        await asyncio.sleep(seconds)
        c.recording = False
        after, wall = c.snapshot(), time.perf_counter() - t0
        cpu = {name: proc_cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        kernel = {name: proc_kernel_seconds(pid) - kernel0[name] for name, pid in pids.items()}
        syscalls = {name: proc_syscalls(pid) - sys0[name] for name, pid in pids.items()}
        cpu["machine"] = machine_busy_seconds() - busy0
        cpu["others"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine"))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.settle()
        for proc in spies:
            await asyncio.to_thread(proc.wait)
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


def _row(
    label: str,
    loaded: dict[str, Any],
    unloaded: dict[str, Any],
    ledger: dict[str, int],
    settings: str,
    fanout: int,
    server_names: list[str],
) -> dict[str, Any]:
    """Derived numbers for one row; `server_names` are the processes the target is on."""
    msgs, wall, cpu = loaded["acks"], loaded["wall_s"], loaded["cpu_s"]
    server_cpu = sum(cpu[n] for n in server_names)
    lb_cpu = cpu.get("lb")
    per_msg = server_cpu / msgs if msgs else None
    row: dict[str, Any] = {
        "row": label,
        "settings": settings,
        "fanout": fanout,
        "msgs_per_s": msgs / wall,
        "deliveries_per_s": loaded["deliveries"] / wall,
        "latency_loaded_ms": {k: loaded[f"delivery_{k}_ms"] for k in ("p50", "p99")},
        "ack_latency_loaded_ms": {k: loaded[f"ack_{k}_ms"] for k in ("p50", "p99")},
        "latency_unloaded_ms": {k: unloaded[f"delivery_{k}_ms"] for k in ("p50", "p99")},
        "ack_latency_unloaded_ms": {k: unloaded[f"ack_{k}_ms"] for k in ("p50", "p99")},
        "server_cpu_s": round(server_cpu, 3),
        "server_us_per_msg": per_msg * 1e6 if per_msg else None,
        "msgs_per_server_cpu_s": 1 / per_msg if per_msg else None,
        "deliveries_per_server_cpu_s": loaded["deliveries"] / server_cpu if server_cpu else None,
        "lb_us_per_msg": lb_cpu / msgs * 1e6 if lb_cpu is not None and msgs else None,
        "lb_share_of_sidecars": lb_cpu / server_cpu if lb_cpu is not None and server_cpu else None,
        "redis_us_per_msg": cpu["redis"] / msgs * 1e6 if "redis" in cpu and msgs else None,
        "server_kernel_share": (
            sum(loaded["kernel_s"][n] for n in server_names) / server_cpu if server_cpu else None
        ),
        "lb_kernel_share": loaded["kernel_s"]["lb"] / lb_cpu if lb_cpu else None,
        "server_syscalls_per_msg": (
            sum(loaded["syscalls"][n] for n in server_names) / msgs if msgs else None
        ),
        "lb_syscalls_per_msg": (
            loaded["syscalls"]["lb"] / msgs if "lb" in loaded["syscalls"] and msgs else None
        ),
        "cores_used": {name: round(v / wall, 2) for name, v in cpu.items()},
        "ledger": ledger,
    }
    return row


async def bench_echo(url: str, pid: int, p: Profile) -> dict[str, Any]:
    clients = await open_clients(url, None, list(range(p.direct_conns)))
    driver = Driver(clients, 1, echo=True)
    pids = {"echo": pid, "driver": os.getpid()}
    spy = (p.py_spy_dir, "echo") if p.py_spy_dir else None
    loaded = await driver.phase(clients, direct_frame, p.window, p.warmup_s, p.seconds, pids, spy)
    unloaded = await driver.phase(clients[:1], direct_frame, 1, 0.2, p.unloaded_s, pids)
    ledger = driver.ledger()
    await driver.close()
    settings = f"{p.direct_conns} conns × window {p.window}"
    row = _row("(a) bare websockets echo", loaded, unloaded, ledger, settings, 1, ["echo"])
    # The library's own floor for the memory target: one server connection + its handler.
    await asyncio.sleep(0.5)
    before = proc_rss_bytes(pid)
    idle = await open_clients(url, None, list(range(p.idle_conns)))
    await asyncio.sleep(1.0)
    row["idle_bytes_per_conn"] = (proc_rss_bytes(pid) - before) / p.idle_conns
    await close_clients(idle)
    return row


def _stack_pids(stack: Stack, r: redis.Redis) -> dict[str, int]:
    return {
        **stack.pids,
        "redis": int(r.info("server")["process_id"]),
        "driver": os.getpid(),
    }


async def bench_direct(stack: Stack, r: redis.Redis, p: Profile) -> dict[str, Any]:
    """Each connection sends to another connected user, a fixed random derangement."""
    users = list(range(p.direct_conns))
    clients = await open_clients(stack.lb_url, DIRECT_TENANT, users)
    rng = random.Random(7)
    targets = users[1:] + users[:1]
    rng.shuffle(targets)
    while any(t == u for t, u in zip(targets, users, strict=True)):
        rng.shuffle(targets)
    for c, t in zip(clients, targets, strict=True):
        c.to = t
    owner = build(stack.algo, sorted(stack.sidecar_pids)).owner
    cross = sum(owner((DIRECT_TENANT, c.user)) != owner((DIRECT_TENANT, c.to)) for c in clients)
    driver = Driver(clients, 1, echo=False)
    pids = _stack_pids(stack, r)
    spy = (p.py_spy_dir, "direct") if p.py_spy_dir else None
    loaded = await driver.phase(clients, direct_frame, p.window, p.warmup_s, p.seconds, pids, spy)
    unloaded = await driver.phase(clients[:1], direct_frame, 1, 0.2, p.unloaded_s, pids)
    ledger = driver.ledger()
    await driver.close()
    settings = (
        f"{p.direct_conns} conns × window {p.window}; {cross}/{len(clients)} pairs cross sidecars"
    )
    row = _row(
        "(b) direct via LB + 2 sidecars", loaded, unloaded, ledger, settings, 1,
        list(stack.sidecar_pids),
    )  # fmt: skip
    row["cross_sidecar_fraction"] = cross / len(clients)
    return row


async def bench_team(stack: Stack, r: redis.Redis, p: Profile) -> dict[str, Any]:
    """50 members online, each on its own connection; a few of them send to the team.

    Every message reaches all 50 connections (the sender's own included: it is an
    online member), so one message = 50 deliveries and the ack says `delivered: 50`.
    """
    members = range(TEAM_SIZE)
    seed_team(r, TEAM_TENANT, TEAM, members)
    clients = await open_clients(stack.lb_url, TEAM_TENANT, list(members))
    await asyncio.sleep(0.3)  # presence bits are set as each sidecar accepts
    driver = Driver(clients, TEAM_SIZE, echo=False)
    pids = _stack_pids(stack, r)
    senders = clients[: p.team_senders]
    spy = (p.py_spy_dir, "team") if p.py_spy_dir else None
    loaded = await driver.phase(
        senders, team_frame, p.team_window, p.warmup_s, p.seconds, pids, spy
    )
    unloaded = await driver.phase(clients[:1], team_frame, 1, 0.2, p.unloaded_s, pids)
    ledger = driver.ledger()
    await driver.close()
    settings = f"{p.team_senders} senders × window {p.team_window}, {TEAM_SIZE} receivers"
    return _row(
        "(c) team 1→50 via LB + 2 sidecars", loaded, unloaded, ledger, settings, TEAM_SIZE,
        list(stack.sidecar_pids),
    )  # fmt: skip


async def bench_idle(stack: Stack, p: Profile) -> dict[str, Any]:
    """RSS of the LB and the sidecars before and after `idle_conns` idle connections.

    A warm-up batch is opened and closed first, so one-off allocations (imports on the
    first handshake, the id-mode cache) are in the baseline, not in the per-connection
    figure.
    """
    warm = await open_clients(stack.lb_url, IDLE_TENANT, list(range(100)))
    await close_clients(warm)
    await asyncio.sleep(1.0)
    names = list(stack.pids)
    before = {n: proc_rss_bytes(stack.pids[n]) for n in names}
    started = time.perf_counter()
    clients = await open_clients(stack.lb_url, IDLE_TENANT, list(range(p.idle_conns)))
    open_s = time.perf_counter() - started
    await asyncio.sleep(1.5)
    after = {n: proc_rss_bytes(stack.pids[n]) for n in names}
    await close_clients(clients)
    await asyncio.sleep(1.0)
    n = p.idle_conns
    delta = {k: after[k] - before[k] for k in names}
    return {
        "connections": n,
        "open_seconds": round(open_s, 2),
        "rss_before": before,
        "rss_after": after,
        "bytes_per_conn": {k: v / n for k, v in delta.items()},
        "total_bytes_per_conn": sum(delta.values()) / n,
    }


# --- report ---------------------------------------------------------------------------


def targets(rows: list[dict[str, Any]], idle: dict[str, Any]) -> list[tuple[str, str, bool]]:
    direct = next(r for r in rows if r["row"].startswith("(b)"))
    team = next(r for r in rows if r["row"].startswith("(c)"))
    out = [
        (
            f"(b) ≥ {TARGET_MSGS_PER_CPU_S:,} msgs per sidecar CPU-s",
            f"{direct['msgs_per_server_cpu_s']:,.0f}",
            direct["msgs_per_server_cpu_s"] >= TARGET_MSGS_PER_CPU_S,
        ),
        (
            f"(c) ≥ {TARGET_MSGS_PER_CPU_S:,} deliveries per sidecar CPU-s",
            f"{team['deliveries_per_server_cpu_s']:,.0f}",
            team["deliveries_per_server_cpu_s"] >= TARGET_MSGS_PER_CPU_S,
        ),
    ]
    for r in (direct, team):
        out.append(
            (
                f"{r['row'][:3]} LB CPU ≤ {TARGET_LB_SHARE:.0%} of sidecars' per message",
                f"{r['lb_share_of_sidecars']:.0%}",
                r["lb_share_of_sidecars"] <= TARGET_LB_SHARE,
            )
        )
    out.append(
        (
            f"≤ {TARGET_BYTES_PER_CONN // 1024} KB (LB + sidecars) per idle connection",
            f"{idle['total_bytes_per_conn'] / 1024:,.1f} KB at {idle['connections']:,}",
            idle["total_bytes_per_conn"] <= TARGET_BYTES_PER_CONN,
        )
    )
    for r in rows:
        lost = r["ledger"]["lost"] + r["ledger"]["unacked"] + r["ledger"]["errors"]
        out.append((f"{r['row'][:3]} nothing lost, no errors", str(lost), lost == 0))
    return out


def _ms(pair: dict[str, float | None]) -> str:
    return " / ".join("—" if v is None else f"{v:.2f}" for v in pair.values())


def _num(v: float | None, fmt: str = ",.0f") -> str:
    return "—" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def print_report(console: Console, doc: dict[str, Any]) -> None:
    console.print(f"[bold]wsop stack benchmark[/] ({doc['profile']})")
    console.print(f"reproduce: [cyan]{doc['command']}[/]")
    console.print(f"machine: {doc['machine']} (driver, LB, sidecars and Redis share it)")
    console.print(
        "latency: send → receive at the recipient (one clock: the driver holds both ends); "
        "ack = send → ack at the sender; 'unloaded' = one sender, 1 in flight\n"
    )
    t = Table(title="Throughput and latency (p50 / p99 ms)")
    for col in ("row", "load", "msgs/s", "deliv/s", "loaded", "ack loaded", "unloaded",
                "ack unloaded"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("row", "load") else "right")
    for r in doc["rows"]:
        t.add_row(
            r["row"], r["settings"], _num(r["msgs_per_s"]), _num(r["deliveries_per_s"]),
            _ms(r["latency_loaded_ms"]), _ms(r["ack_latency_loaded_ms"]),
            _ms(r["latency_unloaded_ms"]), _ms(r["ack_latency_unloaded_ms"]),
        )  # fmt: skip
    console.print(t)
    c = Table(title="CPU per message (server = echo process for (a), both sidecars for (b)/(c))")
    for col in ("row", "server µs/msg", "msgs/server CPU-s", "deliv/server CPU-s",
                "LB µs/msg", "LB % of sidecars", "Redis µs/msg", "syscalls/msg server, LB",
                "kernel % server, LB", "cores used"):  # fmt: skip
        c.add_column(col, justify="left" if col in ("row", "cores used") else "right")
    for r in doc["rows"]:
        share = r["lb_share_of_sidecars"]
        c.add_row(
            r["row"], _num(r["server_us_per_msg"], ".1f"), _num(r["msgs_per_server_cpu_s"]),
            _num(r["deliveries_per_server_cpu_s"]), _num(r["lb_us_per_msg"], ".1f"),
            "—" if share is None else f"{share:.0%}", _num(r["redis_us_per_msg"], ".1f"),
            f"{_num(r['server_syscalls_per_msg'], '.1f')}, {_num(r['lb_syscalls_per_msg'], '.1f')}",
            f"{_pct(r['server_kernel_share'])}, {_pct(r['lb_kernel_share'])}",
            " ".join(f"{k} {v:.2f}" for k, v in r["cores_used"].items()),
        )  # fmt: skip
    console.print(c)
    idle = doc["idle"]
    per = ", ".join(f"{k} {v / 1024:,.1f} KB" for k, v in idle["bytes_per_conn"].items())
    console.print(
        f"idle connections: {idle['connections']:,} opened via the LB in "
        f"{idle['open_seconds']} s; RSS per connection {idle['total_bytes_per_conn'] / 1024:,.1f}"
        f" KB ({per}); the bare echo server: "
        f"{doc['rows'][0]['idle_bytes_per_conn'] / 1024:,.1f} KB per connection"
    )
    for r in doc["rows"]:
        console.print(f"ledger {r['row'][:3]}: {r['ledger']}")
    tgt = Table(title="Targets")
    for col in ("target", "measured", "verdict"):
        tgt.add_column(col)
    for name, measured, ok in doc["targets_tuples"]:
        tgt.add_row(name, measured, "[green]pass[/]" if ok else "[red]FAIL[/]")
    console.print(tgt)


async def run(p: Profile, quiet: bool) -> dict[str, Any]:
    console = Console(stderr=True, quiet=quiet)
    rows: list[dict[str, Any]] = []
    with console.status("(a) echo server…"), echo_server() as (url, pid):
        rows.append(await bench_echo(url, pid, p))
    with private_redis() as (r, info):
        console.print("starting the private stack…")
        with private_stack(2, f"redis://127.0.0.1:{info.port}/0") as stack:
            with console.status(f"{p.idle_conns:,} idle connections…"):
                idle = await bench_idle(stack, p)
            with console.status("(b) direct messages…"):
                rows.append(await bench_direct(stack, r, p))
            with console.status("(c) team messages…"):
                rows.append(await bench_team(stack, r, p))
    return {"rows": rows, "idle": idle, "redis": f"{info.version} ({info.allocator})"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test < 30 s")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    for flag, kind, what in (
        ("--seconds", float, "timed window of each loaded phase"),
        ("--conns", int, "(a)/(b): connections, all of them sending"),
        ("--window", int, "(a)/(b): messages in flight per connection"),
        ("--team-senders", int, "(c): how many of the 50 members send"),
        ("--team-window", int, "(c): messages in flight per sender"),
        ("--idle-conns", int, "connections held open for the memory figure"),
        ("--py-spy-dir", str, "record py-spy profiles (raw collapsed stacks) here"),
    ):
        parser.add_argument(flag, type=kind, help=f"{what} (overrides the profile)")
    args = parser.parse_args()
    import uvloop

    if args.echo_server:
        uvloop.run(_echo_main())
        return 0
    fd_limit = raise_fd_limit()
    p = QUICK if args.quick else FULL
    overrides = {
        "seconds": args.seconds,
        "direct_conns": args.conns,
        "window": args.window,
        "team_senders": args.team_senders,
        "team_window": args.team_window,
        "idle_conns": args.idle_conns,
        "py_spy_dir": args.py_spy_dir,
    }
    p = replace(p, **{k: v for k, v in overrides.items() if v is not None})
    command = " ".join([COMMAND, *sys.argv[1:]])
    started = time.perf_counter()
    result = uvloop.run(run(p, quiet=False))
    checks = targets(result["rows"], result["idle"])
    doc = {
        "command": command,
        "profile": p.name,
        "machine": machine_note(),
        "redis": result["redis"],
        "fd_limit": fd_limit,
        "profile_settings": vars(p),
        "rows": result["rows"],
        "idle": result["idle"],
        "targets": [{"target": t, "measured": m, "pass": ok} for t, m, ok in checks],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)
        print_report(console, {**doc, "targets_tuples": checks})
        console.print(f"\n(total run {doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
