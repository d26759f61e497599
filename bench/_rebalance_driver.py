"""The stack, clients and measurements of bench/rebalance.py: a private `wsop up` stack
driven through the CLI, N clients through the LB with one paced sender, a ledger of
every message, and the CPU / Redis / placement measurements the report is built from.
bench/rebalance.py decides what to run and reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _common import (
    proc_cpu_seconds,
    stop_pids,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from wsop.k8s.executor import gather
from wsop.k8s.local import local_stack
from wsop.local.redis_binary import free_port

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python bench/rebalance.py"
TENANT = "bench-rb"


def recipient(sender: int, seq: int, n: int) -> int:
    """A deterministic, well-spread recipient ≠ sender, so a delivery can be checked."""
    to = (sender * 7919 + seq * 104_729 + 1) % n
    return to if to != sender else (to + 1) % n


# --- the stack ------------------------------------------------------------------------


@dataclass
class Stack:
    """A private `wsop up` stack, driven only through the CLI and its members file."""

    env: dict[str, str]
    state: Path
    redis_pid: int
    """Measured with the stack, never stopped by it (the bench's private redis-server)."""
    pids: dict[str, int] = field(default_factory=dict)
    lb_url: str = ""
    algo: str = ""

    @property
    def members_file(self) -> Path:
        return self.state / "stack.json"

    def reload(self) -> None:
        """Re-read urls and pids (after `scale` a new sidecar has appeared)."""
        doc = json.loads(self.members_file.read_text())
        self.lb_url, self.algo = doc["lb"]["url"], doc["algo"]
        self.pids = {"lb": doc["lb"]["pid"], **{s["name"]: s["pid"] for s in doc["sidecars"]}}

    @property
    def measured(self) -> dict[str, int]:
        """Every process whose CPU the report shows (the stack's and Redis)."""
        return {**self.pids, "redis": self.redis_pid}

    async def wsop(self, *args: str, timeout: float = 600.0) -> tuple[dict[str, Any], float]:
        """Run one `wsop … --json` without blocking the event loop; (answer, wall seconds)."""
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wsop.cli.main", *args, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self.env, cwd=self.state,  # not ROOT: `-m` puts the cwd first on sys.path
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip()[-800:]
            raise RuntimeError(f"wsop {' '.join(args)} exited {proc.returncode}: {tail}")
        return json.loads(out), wall

    def lb_failures(self) -> dict[str, float]:
        """`wsop_lb_upstream_failures_total` by reason from the LB's /metrics: a failed
        switch leaves the client where it was, and only the LB knows it happened."""
        doc = json.loads(self.members_file.read_text())
        request = urllib.request.Request("http" + doc["lb"]["url"][2:] + "/metrics")
        if doc.get("admin_token"):
            request.add_header("Authorization", f"Bearer {doc['admin_token']}")
        with urllib.request.urlopen(request, timeout=10) as resp:
            text = resp.read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("wsop_lb_upstream_failures_total{"):
                labels, value = line.rsplit(" ", 1)
                found[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
        return found

    def log_errors(self, name: str, keep: int = 5) -> list[str]:
        """The last few warning/error lines of one process's log (evidence for a report)."""
        try:
            text = (self.state / "logs" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return []
        hits = [ln for ln in text.splitlines() if "ERROR" in ln or "WARNING" in ln or "rror" in ln]
        return hits[-keep:]

    def locations(self) -> dict[int, list[str]]:
        """user → the sidecars holding a connection of it, from every `/connections`.

        Blocking (urllib): call it in a thread. Uses the same gather as the rebalancer,
        but the members file is read afresh each time.
        """
        record, target = local_stack(self.members_file)
        got = gather(target, [s.name for s in record.sidecars])
        if got.skipped:
            raise RuntimeError(f"/connections failed: {got.skipped}")
        where: dict[int, list[str]] = {}
        for h in got.holdings:
            if h.tenant == TENANT:
                where.setdefault(int(h.user), []).extend([h.member] * h.count)
        return where


@asynccontextmanager
async def private_stack(sidecars: int, redis_url: str, redis_pid: int) -> AsyncIterator[Stack]:
    """`wsop up` in a temp WSOP_STATE_DIR (never the developer's stack), `wsop down` after."""
    with tempfile.TemporaryDirectory(prefix="wsop-bench-rebalance-") as state:
        env = {k: v for k, v in os.environ.items() if k not in ("WSOP_SECRET", "WSOP_REDIS_URL")}
        env["WSOP_STATE_DIR"] = state
        stack = Stack(env, Path(state), redis_pid)
        try:
            await stack.wsop(
                "up", "--detach", "--insecure", "--sidecars", str(sidecars),
                "--port", str(free_port()), "--redis", redis_url,
            )  # fmt: skip
            stack.reload()
            yield stack
        finally:
            if stack.members_file.exists():
                with contextlib.suppress(Exception):
                    stack.reload()
                try:
                    await stack.wsop("down", timeout=60)
                except (RuntimeError, TimeoutError) as exc:
                    print(f"warning: {exc}; stopping the stack's pids", file=sys.stderr)
                    stop_pids(list(stack.pids.values()))


# --- the driver -----------------------------------------------------------------------


@dataclass
class Ledger:
    """Everything the clients saw; keys of `sent_at`/`received` are (sender, seq)."""

    sent_at: dict[tuple[int, int], float] = field(default_factory=dict)
    received: Counter[tuple[int, int]] = field(default_factory=Counter)
    misrouted: int = 0
    acks: int = 0
    ack_zero: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    """(message id, when, the ack frame) of acks that said `delivered: 0`."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    closed: list[dict[str, Any]] = field(default_factory=list)
    send_failed: int = 0


class Driver:
    """N clients through the LB, one reader task each, one paced sender for all."""

    def __init__(self, lb_url: str, n: int) -> None:
        self.lb_url = lb_url
        self.n = n
        self.clients: list[ClientConnection] = []
        self.ledger = Ledger()
        self.t0 = time.monotonic()
        self._readers: list[asyncio.Task[None]] = []
        self._sender: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    async def open(self, concurrency: int = 64) -> float:
        """Connect user 0..N-1 (insecure `?tenant=&user=`); seconds it took."""
        gate = asyncio.Semaphore(concurrency)
        started = time.perf_counter()

        async def one(user: int) -> ClientConnection:
            async with gate:
                return await connect(
                    f"{self.lb_url}/ws?tenant={TENANT}&user={user}", compression=None,
                    open_timeout=60, ping_interval=None, max_size=None, proxy=None,
                )  # fmt: skip

        self.clients = list(await asyncio.gather(*(one(u) for u in range(self.n))))
        self._readers = [asyncio.create_task(self._read(u)) for u in range(self.n)]
        return time.perf_counter() - started

    async def _read(self, user: int) -> None:
        ws, led = self.clients[user], self.ledger
        try:
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "message":
                    sender, seq = frame["data"]
                    led.received[(sender, seq)] += 1
                    if recipient(sender, seq, self.n) != user:
                        led.misrouted += 1
                elif kind == "ack":
                    led.acks += 1
                    if frame.get("delivered") == 0:
                        led.ack_zero.append((str(frame.get("id")), self.now(), frame))
                else:
                    led.errors.append({"user": user, "t": self.now(), "frame": frame})
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            led.closed.append(
                {
                    "user": user,
                    "t": self.now(),
                    "code": rcvd.code if rcvd else None,
                    "reason": rcvd.reason if rcvd else None,
                }
            )

    def start_traffic(self, rate: float) -> None:
        """Direct messages at `rate`/s, senders round-robin over all N clients."""
        self._sender = asyncio.create_task(self._send_loop(rate))

    async def _send_loop(self, rate: float) -> None:
        seqs = [0] * self.n
        led = self.ledger
        start, count, sender = time.monotonic(), 0, 0
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * rate)
            while count < due:
                seq = seqs[sender]
                seqs[sender] += 1
                frame = (
                    f'{{"type":"direct","to":{recipient(sender, seq, self.n)},'
                    f'"data":[{sender},{seq}],"id":"{sender}.{seq}"}}'
                )
                try:
                    await self.clients[sender].send(frame)
                    led.sent_at[(sender, seq)] = self.now()
                except ConnectionClosed:
                    led.send_failed += 1
                count += 1
                sender = (sender + 1) % self.n
            await asyncio.sleep(0.005)

    async def stop_traffic(self) -> None:
        self._stop.set()
        if self._sender is not None:
            await self._sender

    async def close(self) -> None:
        gate = asyncio.Semaphore(256)

        async def one(ws: ClientConnection) -> None:
            async with gate:
                await ws.close()

        await asyncio.gather(*(one(ws) for ws in self.clients), return_exceptions=True)
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def tally(self) -> dict[str, Any]:
        led = self.ledger
        lost = [k for k in led.sent_at if led.received[k] == 0]
        closed_at = {c["user"]: c["t"] for c in led.closed}
        ids = (tuple(int(x) for x in i.split(".")) for i, _, _ in led.ack_zero)
        ack_wrong = [k for k in ids if led.received[k]]
        to_closed = [k for k in lost if closed_at.get(recipient(*k, self.n), 1e9) <= led.sent_at[k]]
        duplicated = [k for k, n in led.received.items() if n > 1]
        unexpected = [k for k in led.received if k not in led.sent_at]
        return {
            "sent": len(led.sent_at),
            "received": sum(led.received.values()),
            "lost": len(lost),
            "lost_recipient_already_closed": len(to_closed),
            "duplicated": len(duplicated),
            "unexpected": len(unexpected),
            "misrouted": led.misrouted,
            "acks": led.acks,
            "acks_delivered_0": len(led.ack_zero),
            "error_frames": len(led.errors),
            "closed_clients": len(led.closed),
            "send_failed": led.send_failed,
            "lost_examples": [
                {
                    "sender": s,
                    "seq": q,
                    "to": recipient(s, q, self.n),
                    "sent_at": led.sent_at[(s, q)],
                }
                for s, q in lost[:10]
            ],
            "acks_delivered_0_but_delivered": len(ack_wrong),
            "ack_zero_examples": [f"{i}@{t} {f}" for i, t, f in led.ack_zero[:10]],
            "error_examples": led.errors[:5],
            "closed_examples": led.closed[:10],
        }


# --- measurements ---------------------------------------------------------------------


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU-seconds so far of every stack process, the driver and waited-for children."""
    snap = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
    snap["driver"] = proc_cpu_seconds(os.getpid())
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    snap["wsop CLI"] = usage.ru_utime + usage.ru_stime
    return snap


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after}


async def redis_peak(r: redis.Redis, into: dict[str, int]) -> None:
    """Track Redis's peak `connected_clients`: every sidecar's pool grows with its
    concurrent commands, so this tells a full server (`maxclients`) from a full pool
    (redis-py's asyncio default is 100 per sidecar, seen as 401 at ~9.5K clients)."""
    while True:
        info = await asyncio.to_thread(r.info, "clients")
        into["peak"] = max(into.get("peak", 0), int(info["connected_clients"]))
        await asyncio.sleep(0.2)


def off_target(where: dict[int, list[str]], final: dict[int, str]) -> tuple[int, int]:
    """(users not alone on their planned sidecar, users with more than one connection)."""
    wrong = sum(1 for u, target in final.items() if where.get(u) != [target])
    doubled = sum(1 for places in where.values() if len(places) > 1)
    return wrong, doubled


async def settle(
    stack: Stack, final: dict[int, str], timeout: float
) -> tuple[float | None, dict[int, list[str]]]:
    """Poll `/connections` until every user sits alone on its planned sidecar.

    `/move` returns as soon as the control frame is on its way; the LB then dials the
    target and drains the old upstream, so the sidecars' view is the ground truth.
    """
    started = time.perf_counter()
    while True:
        where = await asyncio.to_thread(stack.locations)
        if off_target(where, final) == (0, 0):
            return time.perf_counter() - started, where
        if time.perf_counter() - started > timeout:
            return None, where
        await asyncio.sleep(0.25)


def minimum_moves(plan: dict[str, Any]) -> dict[str, int]:
    """Lower bounds from the plan's own numbers (one connection per user here).

    - `not_on_target`: connections not on their final target (the dry run's moves);
    - `not_on_owner`: connections not on their ring owner with 4 members (the minimum
      for "everyone on the ring");
    - `over_capacity`: Σ max(0, load − capacity): the least any move set must do to get
      every member within ⌈(1 + ε) · mean⌉.
    """
    return {
        "not_on_target": sum(m["count"] for m in plan["plan"]),
        "over_capacity": sum(max(0, v - plan["capacity"]) for v in plan["loads_before"].values()),
    }
