"""A fuzz campaign: many raw connections send the corpus (`wsop.fuzz.mutate`) through
the LB and straight to the sidecars, reconnecting whenever a server closes one, while
honest clients (`wsop.fuzz.honest`) of the same tenants keep exchanging messages.

Each fuzz connection picks a tenant, a fuzz user of that tenant and a target, writes a
batch (20–300 safe frames, then a killer, a clean close, a bare EOF or an abort), cut at
random offsets into up to 64 writes, and reads everything the server says: close codes,
error codes, and every delivered message, whose sender must be of the connection's
tenant. A connection the server closes is answered like RFC 6455 asks (our close frame,
when our stream is at a frame boundary, else our FIN) and replaced by a new one.

`Report.problems` (`wsop.fuzz.report`) judges the run: the tallies, the honest
clients' ledger, and the stack's own findings (crashed processes, tracebacks in logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wsop.fuzz.frames import BINARY, CLOSE, TEXT, ServerFrame
from wsop.fuzz.honest import HonestClient, Ledger, sender_tenant_ok
from wsop.fuzz.mutate import (
    FUZZ_TEAM,
    HONEST_TEAM,
    HONEST_USERS,
    Corpus,
    build_corpus,
    cut,
    fuzz_users,
)
from wsop.fuzz.raw import RawConnection, close_reply
from wsop.fuzz.report import Config, Report, Tally
from wsop.fuzz.stack import FuzzStack, seed_tenants

_CLOSING_KILLERS = frozenset({"bad-close", "close-bad-utf8", "close"})
CLOSE_WAIT_S = 0.25
"""How long a fuzz connection waits for the server's close after its last frame, before
it sends its own FIN (a desynchronised server may be waiting for a payload that will
never come)."""
PROGRESS_S = 10.0
SETTLE_S = 15.0


@dataclass
class Target:
    name: str
    host: str
    port: int

    @classmethod
    def from_url(cls, name: str, url: str) -> Target:
        parts = urlsplit(url)
        return cls(name, parts.hostname or "127.0.0.1", parts.port or 80)


class _Conn:
    """What the reader of one fuzz connection saw."""

    __slots__ = ("close", "closed", "ended")

    def __init__(self) -> None:
        self.close: int | None = None
        self.closed = asyncio.Event()
        self.ended = "timeout"


class Campaign:
    def __init__(self, config: Config, lb_url: str, sidecar_urls: list[str]) -> None:
        self.config = config
        self.targets = [Target.from_url("lb", lb_url)] + [
            Target.from_url(f"s{i}", url) for i, url in enumerate(sidecar_urls)
        ]
        self.urls = [lb_url, *sidecar_urls]
        self.tenants = list(config.tenants)
        self.corpora: list[Corpus] = [
            build_corpus(config.seed, i) for i in range(len(self.tenants))
        ]
        self.tally = Tally()
        self.ledger = Ledger()
        self.by_target: Counter[str] = Counter()
        self.progress: Callable[[dict[str, Any]], None] | None = None
        """Called every `PROGRESS_S` with a snapshot (bench/fuzz.py prints it)."""
        self.busy: Counter[str] = Counter()
        """Seconds spent in connections, per target (from before the upgrade)."""

    def per_target(self) -> dict[str, dict[str, int]]:
        return {
            name: {"connections": n, "mean_ms": round(1000 * self.busy[name] / n)}
            for name, n in sorted(self.by_target.items())
        }

    # -- fuzzers -----------------------------------------------------------------------

    async def _worker(self, index: int, deadline: float) -> None:
        rng = random.Random(f"{self.config.seed}/worker/{index}")
        target = self.targets[index % len(self.targets)]
        tenant = index // len(self.targets) % len(self.tenants)
        while self.tally.frames < self.config.frames and time.monotonic() < deadline:
            try:
                await self._connection(rng, target, tenant)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self.tally.refused[type(exc).__name__] += 1
                await asyncio.sleep(0.05)

    async def _connection(self, rng: random.Random, target: Target, tenant: int) -> None:
        user = rng.choice(fuzz_users(tenant))
        path = f"/ws?tenant={self.tenants[tenant]}&user={user}"
        began = time.monotonic()
        conn, status = await RawConnection.open(target.host, target.port, path)
        if conn is None:
            self.tally.refused[str(status)] += 1
            return
        tally = self.tally
        tally.connections += 1
        self.by_target[target.name] += 1
        corpus = self.corpora[tenant]
        frames = rng.choices(corpus.safe, k=rng.randrange(20, 300))
        ending = rng.choices(("killer", "close", "eof", "abort"), (70, 10, 10, 10))[0]
        kind = ""
        if ending == "killer":
            kind, last = rng.choice(corpus.killers)
            tally.killers[kind] += 1
            frames.append(last)
        elif ending == "close":
            frames.append(close_reply(1000))
        stream = b"".join(frames)
        boundaries = set(accumulate(map(len, frames)))
        sent_close = ending == "close" or kind in _CLOSING_KILLERS
        state = _Conn()
        reader = asyncio.create_task(self._read(conn, tenant, state))
        written = 0
        try:
            for chunk in cut(stream, rng, rng.choice((1, 1, 2, 4, 16, 64))):
                if state.closed.is_set():
                    break
                if ending == "abort" and written > len(stream) // 2:
                    break
                conn.writer.write(chunk)
                written += len(chunk)
                await asyncio.wait_for(conn.writer.drain(), 5)
            tally.frames += sum(1 for b in boundaries if b <= written) or 1
            tally.bytes += written
            if ending == "abort":
                conn.abort()
            elif not state.closed.is_set() and ending != "eof" and kind != "truncated-eof":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.closed.wait(), CLOSE_WAIT_S)
            if conn.writer.is_closing():
                pass  # (aborted)
            elif state.closed.is_set() and not sent_close and written in boundaries:
                conn.writer.write(close_reply(state.close))
            elif conn.writer.can_write_eof():
                conn.writer.write_eof()
            await asyncio.wait_for(asyncio.shield(reader), 3)
        except TimeoutError:
            state.ended = "timeout"
        except OSError:
            state.ended = "reset"
        finally:
            conn.abort()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reader
            tally.endings[state.ended] += 1
            self.busy[target.name] += time.monotonic() - began
            tally.closes[str(state.close) if state.close is not None else "none"] += 1

    async def _read(self, conn: RawConnection, tenant: int, state: _Conn) -> None:
        try:
            while True:
                data = await conn.reader.read(65536)
                if not data:
                    state.ended = "fin"
                    return
                for frame in conn.frames.feed(data):
                    self._frame(frame, tenant, state)
        except OSError:
            state.ended = "reset"

    def _frame(self, frame: ServerFrame, tenant: int, state: _Conn) -> None:
        tally = self.tally
        if frame.masked:
            tally.masked += 1
        op = frame.opcode
        if op in (TEXT, BINARY):
            payload = frame.payload
            if payload.startswith(b'{"type":"error"'):
                at = payload.find(b'"code":"') + 8
                tally.errors[payload[at : payload.find(b'"', at)].decode()] += 1
            elif payload.startswith(b'{"type":"ack"'):
                tally.acks += 1
            elif payload.startswith(b'{"type":"message"'):
                tally.deliveries += 1
                msg = _json(payload)
                if not sender_tenant_ok(msg, tenant, self.tenants):
                    got = f"{self.tenants[tenant]} fuzzer got {payload[:200]!r}"
                    tally.cross_tenant.append(got)
            else:
                tally.unknown.append(payload[:100])
        elif op == CLOSE and state.close is None:
            state.close = frame.close_code
            state.closed.set()

    # -- honest clients and the whole run ------------------------------------------------

    async def _honest(self) -> list[HonestClient]:
        clients = []
        for t in range(len(self.tenants)):
            for i, user in enumerate(HONEST_USERS):
                url = self.urls[(t + i) % len(self.urls)]  # the LB and each sidecar
                clients.append(HonestClient(url, self.tenants, t, user, self.ledger))
        await asyncio.gather(*(c.open() for c in clients))
        return clients

    async def _watch(self, clients: list[HonestClient], started: float) -> None:
        """Every `PROGRESS_S`: frames so far, and each honest client's sent/acked and how
        long since its last ack (a stalled client shows here long before the verdict)."""
        assert self.progress is not None
        while True:
            await asyncio.sleep(PROGRESS_S)
            now = time.monotonic()
            self.progress(
                {
                    "s": round(now - started),
                    "frames": self.tally.frames,
                    "connections": self.tally.connections,
                    "honest": [
                        f"{c.tenant}/{c.user}:{c.sent}/{c.acked}/{now - c.last_ack:.1f}s"
                        for c in clients
                    ],
                }
            )

    async def run(self) -> tuple[float, dict[str, Any]]:
        """Fuzz until `frames` were sent (or `max_seconds`); (seconds, honest summary)."""
        config = self.config
        clients = await self._honest()
        readers = [asyncio.create_task(c.read_loop()) for c in clients]
        await asyncio.sleep(0.5)  # presence and holder registrations land first
        stop = asyncio.Event()
        senders = [
            asyncio.create_task(c.send_loop(config.honest_interval, stop, f"{config.seed}/{i}"))
            for i, c in enumerate(clients)
        ]
        started = time.monotonic()
        deadline = started + config.max_seconds
        watch = asyncio.create_task(self._watch(clients, started)) if self.progress else None
        await asyncio.gather(*(self._worker(i, deadline) for i in range(config.workers)))
        seconds = time.monotonic() - started
        if watch is not None:
            watch.cancel()
        stop.set()
        await asyncio.gather(*senders)
        # Until every honest message is acked, or none was for SETTLE_S (a backlog the
        # flood left behind still drains; a lost message never would).
        acked, quiet_since = -1, time.monotonic()
        while not self.ledger.settled() and time.monotonic() - quiet_since < SETTLE_S:
            if len(self.ledger.acks) != acked:
                acked, quiet_since = len(self.ledger.acks), time.monotonic()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the last deliveries trail their acks
        for client in clients:
            await client.close()
        await asyncio.gather(*readers)
        return seconds, self.ledger.summary()


def _json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def run_on_new_stack(
    config: Config,
    redis_url: str,
    workdir: Path,
    sidecars: int = 2,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Report:
    """Seed the tenants, start sidecars and an LB (`wsop.fuzz.stack`), run the campaign,
    stop the stack (always), and report with the stack's crash and traceback findings.

    The tenants' teams: `team-0` holds the honest users, `fz` the fuzz users."""
    seed_tenants(
        redis_url,
        {
            tenant: {HONEST_TEAM: set(HONEST_USERS), FUZZ_TEAM: set(fuzz_users(i))}
            for i, tenant in enumerate(config.tenants)
        },
    )
    stack = FuzzStack(redis_url, workdir).start(sidecars)
    try:
        assert stack.lb is not None
        campaign = Campaign(config, stack.lb.url, [s.url for s in stack.sidecars])
        campaign.progress = progress
        driver = time.process_time()
        seconds, honest = asyncio.run(campaign.run())
        crashed = stack.crashed()  # before stop(): SIGTERM exits are not crashes
        cpu = {**stack.cpu_seconds(), "driver": round(time.process_time() - driver, 2)}
    finally:
        stack.stop()
    report = Report(
        config, seconds, campaign.tally, honest, campaign.per_target(), crashed, stack.tracebacks()
    )
    report.cpu = cpu
    return report
