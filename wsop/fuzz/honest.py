"""Well-behaved clients that keep talking while the fuzzers hammer the same servers, and
the ledger that says whether they were served exactly.

Every honest message carries its sender's tenant in its payload; ids are unique per run.
The ledger knows who must receive each one (a direct message: its recipient; a team
message: every honest member of the tenant, the sender included), checks each ack's
`delivered` against that, and counts copies per receiver. Any message a client of
tenant T receives must come from T: an honest sender's payload says its tenant, a
fuzzer's `from` lies in T's own fuzz id range (`wsop.fuzz.mutate.fuzz_users`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from wsop.fuzz.mutate import HONEST_TEAM, HONEST_USERS, fuzz_users


def sender_tenant_ok(msg: dict[str, Any], tenant_index: int, tenants: list[str]) -> bool:
    """Whether a delivered message to a client of `tenants[tenant_index]` comes from that
    tenant (see the module docstring)."""
    sender = msg.get("from")
    if sender in HONEST_USERS:
        data = msg.get("data")
        return isinstance(data, dict) and data.get("t") == tenants[tenant_index]
    return isinstance(sender, int) and sender in fuzz_users(tenant_index)


@dataclass
class Ledger:
    expected: dict[str, frozenset[tuple[int, int]]] = field(default_factory=dict)
    """Message id → the (tenant index, user) pairs that must receive it once."""
    acks: dict[str, tuple[int, int]] = field(default_factory=dict)
    received: Counter[tuple[int, int, str]] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)
    cross_tenant: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    """Honest connections that ended while they should not have."""
    fuzz_deliveries: int = 0
    ack_seconds: list[float] = field(default_factory=list)
    """Send to ack, per honest message: what the flood did to everyone else."""

    def settled(self) -> bool:
        return len(self.acks) >= len(self.expected)

    def summary(self) -> dict[str, Any]:
        """Counts, and the problems found (each list empty in a clean run)."""
        bad_acks = [
            (mid, self.acks.get(mid), len(who))
            for mid, who in self.expected.items()
            if self.acks.get(mid) != (len(who), 0)
        ]
        missing, dupes = [], []
        wanted = {(t, u, mid) for mid, who in self.expected.items() for t, u in who}
        for key in wanted:
            got = self.received.get(key, 0)
            if got == 0:
                missing.append(key)
            elif got > 1:
                dupes.append(key)
        stray = [key for key in self.received if key not in wanted]
        return {
            "sent": len(self.expected),
            "acked": len(self.acks),
            "expected_deliveries": len(wanted),
            "delivered": sum(min(1, self.received.get(k, 0)) for k in wanted),
            "bad_acks": len(bad_acks),
            "missing": len(missing),
            "duplicates": len(dupes),
            "stray": len(stray),
            "errors": len(self.errors),
            "closed": len(self.closed),
            "cross_tenant": len(self.cross_tenant),
            "fuzz_deliveries": self.fuzz_deliveries,
            "ack_ms": _percentiles_ms(self.ack_seconds),
            "samples": {
                "bad_acks": bad_acks[:5],
                "missing": missing[:5],
                "duplicates": dupes[:5],
                "stray": stray[:5],
                "errors": self.errors[:5],
                "closed": self.closed[:5],
                "cross_tenant": self.cross_tenant[:5],
            },
        }


def _percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(1000 * ordered[-1], 1)}


class HonestClient:
    """One honest user's connection: sends a direct or team message every `interval`."""

    def __init__(
        self, url: str, tenants: list[str], tenant_index: int, user: int, ledger: Ledger
    ) -> None:
        self.url = url
        self.tenants = tenants
        self.tenant_index = tenant_index
        self.user = user
        self.ledger = ledger
        self.ws: ClientConnection | None = None
        self.sent = 0
        self.acked = 0
        self.last_ack = time.monotonic()
        self.sent_at: dict[str, float] = {}

    @property
    def tenant(self) -> str:
        return self.tenants[self.tenant_index]

    async def open(self) -> None:
        self.ws = await connect(
            f"{self.url}/ws?tenant={self.tenant}&user={self.user}",
            open_timeout=10,
            # No client-side keepalive: under a flood an honest message may wait many
            # seconds (it is reported, as latency); what is judged is that it arrives.
            ping_interval=None,
            proxy=None,
            compression=None,
        )

    async def send_one(self, rng: random.Random) -> None:
        assert self.ws is not None
        self.sent += 1
        mid = f"h:{self.tenant_index}:{self.user}:{self.sent}"
        data = {"t": self.tenant, "u": self.user, "n": self.sent}
        if rng.random() < 0.5:
            to = rng.choice(HONEST_USERS)
            frame = {"type": "direct", "to": to, "data": data, "id": mid}
            who = frozenset({(self.tenant_index, to)})
        else:
            frame = {"type": "team", "teams": [HONEST_TEAM], "data": data, "id": mid}
            who = frozenset((self.tenant_index, u) for u in HONEST_USERS)
        self.ledger.expected[mid] = who
        self.sent_at[mid] = time.monotonic()
        await self.ws.send(json.dumps(frame))

    async def send_loop(self, interval: float, stop: asyncio.Event, seed: str) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                await self.send_one(rng)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval * rng.uniform(0.5, 1.5))
        except ConnectionClosed as exc:
            self.ledger.closed.append(f"{self.tenant}/{self.user} (send): {exc}")

    async def read_loop(self) -> None:
        assert self.ws is not None
        ledger = self.ledger
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "ack":
                    ledger.acks[msg["id"]] = (msg["delivered"], msg.get("undelivered", 0))
                    self.acked += 1
                    self.last_ack = time.monotonic()
                    sent = self.sent_at.pop(msg["id"], None)
                    if sent is not None:
                        ledger.ack_seconds.append(self.last_ack - sent)
                elif kind == "message":
                    if not sender_tenant_ok(msg, self.tenant_index, self.tenants):
                        ledger.cross_tenant.append(f"{self.tenant}/{self.user} got {raw!r:.200}")
                    mid = msg.get("id")
                    if msg.get("from") in HONEST_USERS and str(mid).startswith("h:"):
                        ledger.received[(self.tenant_index, self.user, mid)] += 1
                    else:
                        ledger.fuzz_deliveries += 1
                else:
                    ledger.errors.append(msg)
        except ConnectionClosed as exc:
            if exc.rcvd is None or exc.rcvd.code != 1000 or exc.sent is None:
                ledger.closed.append(f"{self.tenant}/{self.user}: {exc}")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
