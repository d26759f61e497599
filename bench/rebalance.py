"""Rebalance under load: scale 3 → 4 sidecars with N live clients, then move them back.

The e2e test (tests/test_rebalance_local.py) proves the mechanism with 300 clients; this
bench asks what it costs at 10K and whether it stays exact:

1. a private stack (`wsop up --detach --insecure --sidecars 3` in a temp WSOP_STATE_DIR,
   its own redis-server), N clients opened through the LB by one asyncio driver
   (websockets client, uvloop);
2. a steady background of direct messages between random clients throughout, each one
   carrying `[sender, seq]` so loss and duplicates are counted exactly (and the recipient
   checked); a steady window first gives the CPU baseline of that traffic;
3. `wsop scale --sidecars 4` (the new sidecar starts empty: the existing clients stay);
4. `wsop rebalance --local --epsilon 0.05 --dry-run` — the plan; its moves are the
   connections not on their final target, i.e. the minimum any rebalance to that
   placement must move;
5. `wsop rebalance --local --epsilon 0.05 --rate R --max-moves N`, timed, with the CPU
   of every stack process over it; then the sidecars' `/connections` are polled until
   every client sits on its planned target alone (the LB drains the old upstream for up
   to 1 s after each switch, so the move is only over then);
6. more traffic, a grace period, then the ledger: lost, duplicated, misrouted, errors,
   acks that said `delivered: 0`, clients that were closed.

Every `wsop` command runs as a subprocess while the driver's event loop keeps the traffic
going. The stack's processes inherit the driver's raised RLIMIT_NOFILE (checked in
/proc/<pid>/limits). Targets: after ≤ 1.05 max/mean, moves ≤ 1.1 × the minimum, 0 lost.

    .venv/bin/python bench/rebalance.py                  # 10K connections, rates 200, 500
    .venv/bin/python bench/rebalance.py --quick          # 1K connections, < 60 s
    .venv/bin/python bench/rebalance.py --connections 9000 --rates 200 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
from _common import (
    machine_note,
    private_redis,
    proc_cpu_seconds,
    proc_fd_count,
    proc_fd_limit,
    proc_rss_bytes,
    raise_fd_limit,
    stop_pids,
)
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from wsop.k8s.executor import gather
from wsop.k8s.local import local_stack
from wsop.k8s.plan import max_over_mean
from wsop.local.redis_binary import free_port
from wsop.ring import build

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python bench/rebalance.py"
TENANT = "bench-rb"
EPSILON = 0.05
TARGET_AFTER = 1.05
TARGET_MOVES_RATIO = 1.1
LB_FDS_PER_CLIENT = 2
"""The LB holds the client's socket and the upstream's; a move adds the new upstream while
the old one drains (≤ 1 s), so a rate of R moves/s costs up to R more."""


@dataclass(frozen=True)
class Profile:
    """Sizes of one run; `quick` stays under a minute on 2 cores."""

    name: str
    connections: int
    rates: tuple[float, ...]
    msg_rate: float
    warmup_s: float = 2.0
    steady_s: float = 5.0
    tail_s: float = 2.0
    grace_s: float = 3.0
    settle_timeout_s: float = 30.0


FULL = Profile("full", 10_000, (200.0, 500.0), 500.0)
QUICK = Profile("quick", 1_000, (200.0,), 300.0, warmup_s=1.0, steady_s=2.0)


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


async def run_rate(
    p: Profile, rate: float, redis_url: str, r: redis.Redis, console: Console
) -> dict[str, Any]:
    """One full scenario on a fresh stack at one move rate."""
    out: dict[str, Any] = {"rate": rate, "connections": p.connections, "msg_rate": p.msg_rate}
    redis_pid = int(r.info("server")["process_id"])
    out["redis_maxclients"] = int(r.config_get("maxclients")["maxclients"])
    out["redis_clients"] = {"start": r.info("clients")["connected_clients"]}
    async with private_stack(3, redis_url, redis_pid) as stack:
        out["fd_limits"] = {name: proc_fd_limit(pid) for name, pid in stack.pids.items()}
        driver = Driver(stack.lb_url, p.connections)
        with console.status(f"opening {p.connections:,} clients through the LB…"):
            out["open_s"] = round(await driver.open(), 2)
        out["lb_fds_open"] = proc_fd_count(stack.pids["lb"])
        out["redis_clients"]["opened"] = r.info("clients")["connected_clients"]
        out["rss_mb"] = {n: round(proc_rss_bytes(pid) / 2**20) for n, pid in stack.pids.items()}
        driver.start_traffic(p.msg_rate)
        peak = asyncio.create_task(redis_peak(r, out["redis_clients"]))
        with console.status(f"steady traffic ({p.msg_rate:.0f} msg/s), CPU baseline…"):
            await asyncio.sleep(p.warmup_s)
            c0, t0 = cpu_snapshot(stack.measured), time.perf_counter()
            await asyncio.sleep(p.steady_s)
            steady = cpu_delta(c0, cpu_snapshot(stack.measured))
            wall = time.perf_counter() - t0
        out["baseline_cores"] = {k: round(v / wall, 3) for k, v in steady.items()}

        with console.status("wsop scale --sidecars 4…"):
            _, out["scale_s"] = await stack.wsop("scale", "--sidecars", "4")
            stack.reload()
        common = ["rebalance", "--local", "--epsilon", str(EPSILON)]
        budget = ["--max-moves", str(p.connections)]
        with console.status("wsop rebalance --dry-run…"):
            dry, out["dry_run_s"] = await stack.wsop(*common, "--dry-run", *budget)
        before = await asyncio.to_thread(stack.locations)

        with console.status(f"wsop rebalance --rate {rate:g} ({len(dry['plan'])} moves)…"):
            c0, t0 = cpu_snapshot(stack.measured), time.perf_counter()
            real, out["rebalance_s"] = await stack.wsop(*common, "--rate", f"{rate:g}", *budget)
            c1 = cpu_snapshot(stack.measured)
        final = {u: places[0] for u, places in before.items()}
        for mv in real["plan"]:
            final[int(mv["user"])] = mv["to"]
        with console.status("waiting until every client sits on its target…"):
            settle_s, after = await settle(stack, final, p.settle_timeout_s)
        c2, done_s = cpu_snapshot(stack.measured), time.perf_counter() - t0
        out["redis_clients"]["settled"] = r.info("clients")["connected_clients"]
        out["settled_s"] = None if settle_s is None else round(done_s, 3)
        out["cpu_rebalance_cli"] = cpu_delta(c0, c1)
        out["cpu_until_settled"] = cpu_delta(c0, c2)
        out["until_settled_wall_s"] = round(done_s, 3)
        out["off_target_at_end"], out["doubled_at_end"] = off_target(after, final)

        with console.status("more traffic, then the grace period…"):
            await asyncio.sleep(p.tail_s)
            await driver.stop_traffic()
            await asyncio.sleep(p.grace_s)
        again, _ = await stack.wsop(*common, "--dry-run", *budget)
        out["lb_upstream_failures"] = await asyncio.to_thread(stack.lb_failures)
        out["lb_log_errors"] = stack.log_errors("lb")
        status, _ = await stack.wsop("status")
        out["ledger"] = driver.tally()
        peak.cancel()
        await driver.close()

    owner = build(real["algo"], real["members"]).owner
    moved_users = {u for u in before if before[u] != after.get(u)}
    final_loads: Counter[str] = Counter(dict.fromkeys(real["members"], 0))
    for places in after.values():
        final_loads.update(places)
    out.update(
        {
            "before": real["before"],
            "after": real["after"],
            "planned_after": real["planned_after"],
            "capacity": real["capacity"],
            "loads_before": real["loads_before"],
            "loads_after": real["loads_after"],
            "dry_run_moves": dry["moves"],
            "plan_identical": dry["plan"] == real["plan"],
            "moves": real["moves"],
            "moved": real["moved"],
            "moved_connections": real["moved_connections"],
            "errors": real["errors"][:10],
            "error_count": len(real["errors"]),
            "skipped_pods": real["skipped_pods"],
            "observed": len(moved_users),
            "observed_loads_after": dict(sorted(final_loads.items())),
            "observed_after": max_over_mean(final_loads, len(real["members"])),
            "minimum": {
                **minimum_moves(dry),
                "not_on_owner": sum(
                    1 for u, places in before.items() if places != [owner((TENANT, u))]
                ),
            },
            "second_dry_run_moves": again["moves"],
            "final_connections": sum(s["connections"] or 0 for s in status["sidecars"]),
            "lb_connections": status["lb"]["connections"],
        }
    )
    minimum = out["minimum"]["not_on_target"]
    out["moves_over_minimum"] = out["moved_connections"] / minimum if minimum else None
    out["observed_over_minimum"] = len(moved_users) / minimum if minimum else None
    out["per_move_ms"] = out["rebalance_s"] / out["moved"] * 1000 if out["moved"] else None
    # The CLI's fixed cost (start-up, gather, plan) is what the dry run measures alone.
    execute_s = max(0.0, out["rebalance_s"] - out["dry_run_s"])
    out["execute_s"] = round(execute_s, 3)
    out["execute_per_move_ms"] = execute_s / out["moved"] * 1000 if out["moved"] else None
    out["achieved_rate"] = out["moved"] / out["rebalance_s"] if out["rebalance_s"] else None
    cpu = out["cpu_until_settled"]
    out["cpu_extra_over_baseline"] = {
        k: round(v - out["baseline_cores"].get(k, 0.0) * done_s, 3) for k, v in cpu.items()
    }
    return out


# --- report ---------------------------------------------------------------------------


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    led = r["ledger"]
    lost = led["lost"]
    ratio = r["moves_over_minimum"]
    return [
        (
            f"after ≤ {TARGET_AFTER} (CLI's, and observed)",
            f"{r['after']:.4f}, {r['observed_after']:.4f}",
            max(r["after"], r["observed_after"]) <= TARGET_AFTER,
        ),
        (
            f"moves ≤ {TARGET_MOVES_RATIO}× minimum",
            "—"
            if ratio is None
            else f"{r['moved_connections']:,} / {r['minimum']['not_on_target']:,} = {ratio:.3f}",
            ratio is not None and ratio <= TARGET_MOVES_RATIO,
        ),
        ("0 lost", f"{lost:,} of {led['sent']:,}", lost == 0),
        (
            "0 duplicated / misrouted / errors / closed",
            f"{led['duplicated']} / {led['misrouted']} / {led['error_frames']} / "
            f"{led['closed_clients']}",
            not (
                led["duplicated"]
                or led["misrouted"]
                or led["error_frames"]
                or led["closed_clients"]
            ),
        ),  # fmt: skip
        (
            "every client on its target, nothing left to move",
            f"off target {r['off_target_at_end']}, second dry run {r['second_dry_run_moves']}",
            r["off_target_at_end"] == 0 and r["second_dry_run_moves"] == 0,
        ),
    ]


def _num(v: float | None, fmt: str, missing: str = "—") -> str:
    return missing if v is None else format(v, fmt)


def code_note() -> str:
    """Which wsop the stack ran: the measured code must be named, because the working
    tree may hold someone's uncommitted rework (run with PYTHONPATH=<export of a commit>
    to measure a commit; the stack's processes inherit PYTHONPATH)."""
    import wsop

    where = Path(wsop.__file__).resolve().parent
    if where != ROOT / "wsop":
        return f"wsop imported from {where} (PYTHONPATH)"
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "wsop"],
        capture_output=True, text=True,
    ).stdout.split("\n")  # fmt: skip
    changed = [line[3:] for line in dirty if line.strip()]
    return f"working tree at {rev}" + (f", uncommitted: {', '.join(changed)}" if changed else "")


def print_report(console: Console, doc: dict[str, Any]) -> None:
    console.print(f"[bold]wsop rebalance benchmark[/] ({doc['profile']})")
    console.print(f"reproduce: [cyan]{doc['command']}[/]")
    console.print(f"machine: {doc['machine']} (driver, LB, sidecars and Redis share it)")
    console.print(f"code: {doc['code']}")
    console.print(
        f"RLIMIT_NOFILE soft/hard: {doc['fd_limit'][0]:,}/{doc['fd_limit'][1]:,} "
        f"(inherited by the stack: {doc['runs'][0]['fd_limits']})"
    )
    console.print(
        f"{doc['connections']:,} clients through the LB, 3 sidecars → scale to 4 → rebalance "
        f"ε {EPSILON}; {doc['msg_rate']:.0f} direct msg/s throughout\n"
    )
    t = Table(title="Rebalance (one fresh stack per rate)")
    t.add_column("measure")
    for r in doc["runs"]:
        t.add_column(f"--rate {r['rate']:g}", justify="right")

    def row(label: str, fmt: Any) -> None:
        t.add_row(label, *[fmt(r) for r in doc["runs"]])

    row("open N clients (s)", lambda r: f"{r['open_s']:.1f}")
    row("LB fds with N open", lambda r: f"{r['lb_fds_open']:,}")
    row("max/mean before → after", lambda r: f"{r['before']:.4f} → {r['after']:.4f}")
    row("  after, observed", lambda r: f"{r['observed_after']:.4f}")
    row("loads before", lambda r: " ".join(str(v) for v in r["loads_before"].values()))
    row("loads after (planned)", lambda r: " ".join(str(v) for v in r["loads_after"].values()))
    row("capacity ⌈(1+ε)·mean⌉", lambda r: str(r["capacity"]))
    row("minimum: not on target", lambda r: f"{r['minimum']['not_on_target']:,}")
    row("  … not on ring owner", lambda r: f"{r['minimum']['not_on_owner']:,}")
    row("  … Σ over capacity", lambda r: f"{r['minimum']['over_capacity']:,}")
    row(
        "moved (CLI) / observed",
        lambda r: f"{r['moved_connections']:,} / {r['observed']:,}",
    )
    row("moves ÷ minimum", lambda r: f"{r['moves_over_minimum']:.3f}")
    row("dry run = real plan", lambda r: "yes" if r["plan_identical"] else "NO")
    row("move errors", lambda r: str(r["error_count"]))
    row("dry run wall (s)", lambda r: f"{r['dry_run_s']:.2f}")
    row("rebalance wall (s)", lambda r: f"{r['rebalance_s']:.2f}")
    row("  achieved moves/s", lambda r: f"{r['achieved_rate']:.0f}")
    row("  wall per move (ms)", lambda r: f"{r['per_move_ms']:.2f}")
    row("  minus dry run: executing (s)", lambda r: f"{r['execute_s']:.2f}")
    row("  executing per move (ms)", lambda r: _num(r["execute_per_move_ms"], ".2f"))
    row(
        "until all settled (s)",
        lambda r: "timeout" if r["settled_s"] is None else f"{r['settled_s']:.2f}",
    )
    row("sent / received", lambda r: f"{r['ledger']['sent']:,} / {r['ledger']['received']:,}")
    row("lost / duplicated", lambda r: f"{r['ledger']['lost']} / {r['ledger']['duplicated']}")
    row("acks delivered:0", lambda r: str(r["ledger"]["acks_delivered_0"]))
    row("  … but delivered", lambda r: str(r["ledger"]["acks_delivered_0_but_delivered"]))
    row("  … to a closed client", lambda r: str(r["ledger"]["lost_recipient_already_closed"]))
    row("clients closed", lambda r: str(r["ledger"]["closed_clients"]))
    row("LB upstream failures", lambda r: str(r["lb_upstream_failures"] or 0))
    console.print(t)

    c = Table(title="CPU-seconds from rebalance start until settled (extra = over the baseline)")
    for col in (
        "rate",
        "window s",
        "process",
        "CPU-s",
        "extra CPU-s",
        "extra µs/move",
        "baseline cores",
    ):
        c.add_column(col, justify="left" if col == "process" else "right")
    for r in doc["runs"]:
        cpu, extra = r["cpu_until_settled"], r["cpu_extra_over_baseline"]
        for name in cpu:
            per = extra[name] / r["moved"] * 1e6 if r["moved"] else 0.0
            c.add_row(
                f"{r['rate']:g}", f"{r['until_settled_wall_s']:.1f}", name, f"{cpu[name]:.2f}",
                f"{extra[name]:.2f}", f"{per:,.0f}", f"{r['baseline_cores'].get(name, 0.0):.2f}",
            )  # fmt: skip
    console.print(c)
    for r in doc["runs"]:
        led = r["ledger"]
        for key in ("lost_examples", "ack_zero_examples", "error_examples", "closed_examples"):
            if led[key]:
                console.print(f"[red]{key}[/] (rate {r['rate']:g}): {led[key]}")
        if r["errors"]:
            console.print(f"[red]move errors[/] (rate {r['rate']:g}): {r['errors']}")
    tgt = Table(title="Targets")
    for col in ("rate", "target", "measured", "verdict"):
        tgt.add_column(col)
    for r in doc["runs"]:
        for name, measured, ok in targets(r):
            tgt.add_row(
                f"{r['rate']:g}", name, measured, "[green]pass[/]" if ok else "[red]FAIL[/]"
            )
    console.print(tgt)


async def run(p: Profile, quiet: bool) -> dict[str, Any]:
    console = Console(stderr=True, quiet=quiet)
    runs = []
    with private_redis() as (r, info):
        for rate in p.rates:
            console.print(f"run at --rate {rate:g}…")
            url = f"redis://127.0.0.1:{info.port}/0"
            runs.append(await run_rate(p, rate, url, r, console))
    return {"runs": runs, "redis": f"{info.version} ({info.allocator})"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 connections, < 60 s")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--connections", type=int, help="clients through the LB (default 10000)")
    parser.add_argument("--rates", help="comma-separated --rate values, one fresh stack each")
    parser.add_argument("--msg-rate", type=float, help="background direct messages per second")
    args = parser.parse_args()
    import uvloop

    fd_limit = raise_fd_limit()
    p = QUICK if args.quick else FULL
    if args.connections is not None:
        p = replace(p, connections=args.connections)
    if args.rates:
        p = replace(p, rates=tuple(float(x) for x in args.rates.split(",")))
    if args.msg_rate is not None:
        p = replace(p, msg_rate=args.msg_rate)
    need = LB_FDS_PER_CLIENT * p.connections + int(max(p.rates)) + 64
    if need > fd_limit[0]:
        print(
            f"warning: the LB needs ~{need:,} file descriptors for {p.connections:,} clients "
            f"(2 per client + one per move draining + a few), RLIMIT_NOFILE is "
            f"{fd_limit[0]:,} (hard {fd_limit[1]:,}): expect refused connections",
            file=sys.stderr,
        )
    command = " ".join([COMMAND, *sys.argv[1:]])
    code = code_note()
    started = time.perf_counter()
    result = uvloop.run(run(p, quiet=args.json))
    doc = {
        "command": command,
        "profile": p.name,
        "machine": machine_note(),
        "redis": result["redis"],
        "code": code,
        "fd_limit": list(fd_limit),
        "connections": p.connections,
        "msg_rate": p.msg_rate,
        "epsilon": EPSILON,
        "profile_settings": vars(p),
        "runs": result["runs"],
        "targets": [
            {"rate": r["rate"], "target": t, "measured": m, "pass": ok}
            for r in result["runs"]
            for t, m, ok in targets(r)
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)
        print_report(console, doc)
        console.print(f"\n(total run {doc['seconds']} s)")
    return 0 if all(t["pass"] for t in doc["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
