"""The load user: one WebSocket through the LB, paced sends, a receiving greenlet.

gevent world only (imported by the locustfile after locust monkey-patched the standard
library). Follows locust's `contrib/socketio.py`: a blocking client (websocket-client)
made cooperative by gevent, wrapped in a `User`, one request event per delivered
message with a low-cardinality name (`WS`/`direct`, `WS`/`team`) so locust's stats,
CSV and HTML report show end-to-end delivery latency.

Every payload is `[worker, slot, seq, send_ts_us]`: who sent it, its sequence number
and when, so the receiver can time it, tick it off in the ledger, and tell which
tenant (and which fault window) it came from.

A user whose connection drops comes back like a real client: it reconnects with
exponential backoff and jitter (`wsop.load.chaos.reconnect_delay`), proves it is
routable again with the hello round trip (a direct message to itself), and only then
sends again. It stays in its tenant's pool the whole time, so messages to it while it
is away are expected, and the ledger classes them as `lost_disconnected`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
from typing import Any

import gevent
import websocket
from gevent.event import Event
from locust import User, task

from wsop.load.chaos import reconnect_delay
from wsop.load.failures import stable_reason
from wsop.load.frames import OP_CLOSE, OP_PING, OP_TEXT, FrameError, FrameReader
from wsop.load.layout import TenantTeams, slot_identity, team_membership, worker_tenants
from wsop.load.ledger import SEQ_BITS, Ledger
from wsop.load.profiles import LoadPlan

HELLO_TIMEOUT_S = 10.0  # connected but no round trip to self by then: reconnect
HELLO_RETRY_S = 1.0  # a hello can be lost (e.g. presence not yet written): say it again
CONNECT_TIMEOUT_S = 10.0
SETTLE_EVERY_S = 1.0
HELLO = '{"type":"direct","to":%d,"data":"hello","id":"hello"}'
_loads = json.loads
_DROPPED = (EOFError, FrameError, OSError, AttributeError, websocket.WebSocketException)


class WorkerContext:
    """What the users of one locust process share: plan, ledger, who is online."""

    def __init__(self, plan: LoadPlan, worker_index: int) -> None:
        self.plan = plan
        self.index = worker_index
        edges = tuple(f["at_s"] for f in plan.extra.get("chaos", ()))
        self.ledger = Ledger(plan.grace_s, plan.tenants_per_worker, edges, worker_index)
        self.tenants = worker_tenants(plan, worker_index)
        self.teams: dict[str, TenantTeams] = team_membership(plan, self.tenants)
        # Users meant to be online: joined after a round trip proved them routable, left
        # only when their locust User stops. A disconnect does not remove anyone, so
        # messages to a user the stack dropped count as lost, not as "not expected".
        self.pool: dict[str, set[int]] = {t: set() for t in self.tenants}
        self.pool_list: dict[str, list[int]] = {t: [] for t in self.tenants}
        self.per_user_rate = 0.0
        self.secret = os.environ.get("WSOP_SECRET") or None
        self.users: set[WsopUser] = set()
        self._next_slot = 0
        self._free: list[int] = []
        self._settler = gevent.spawn(self._settle_forever)

    def claim_slot(self) -> int:
        if self._free:
            return self._free.pop()
        slot, self._next_slot = self._next_slot, self._next_slot + 1
        return slot

    def release_slot(self, slot: int) -> None:
        self._free.append(slot)

    def join(self, tenant: str, user: int) -> None:
        if user not in self.pool[tenant]:
            self.pool[tenant].add(user)
            self.pool_list[tenant].append(user)
            self.ledger.counters.ready += 1

    def leave(self, tenant: str, user: int) -> None:
        if user in self.pool[tenant]:
            self.pool[tenant].discard(user)
            self.pool_list[tenant].remove(user)
            self.ledger.counters.ready -= 1

    def finish(self) -> dict[str, Any]:
        """Stop the clock: settle every message (the drain stage was the grace period)."""
        self._settler.kill(block=False)
        self.ledger.settle(time.time(), everything=True)
        return self.ledger.snapshot()

    def _settle_forever(self) -> None:
        while True:
            gevent.sleep(SETTLE_EVERY_S)
            self.ledger.settle(time.time())


_context: WorkerContext | None = None


def context(environment: Any) -> WorkerContext:
    """This process's context, built on first use (workers learn the plan at spawn)."""
    global _context
    if _context is None:
        plan = LoadPlan.from_json(environment.parsed_options.wsop_config)
        index = getattr(environment.runner, "worker_index", 0)
        _context = WorkerContext(plan, max(index, 0))
    return _context


def current_context() -> WorkerContext | None:
    return _context


class WsopUser(User):
    """One chat user: sends direct and team messages at the shared pace, receives all."""

    def on_start(self) -> None:
        self.ctx = context(self.environment)
        self.plan = self.ctx.plan
        self.slot = self.ctx.claim_slot()
        self.tenant, self.user = slot_identity(self.plan, self.ctx.index, self.slot)
        self.my_teams = self.ctx.teams[self.tenant].teams_of.get(self.user, ())
        self.members = self.ctx.teams[self.tenant].members
        self.key_base = self.slot << SEQ_BITS
        # slot = user * Tw + tenant index (see layout.slot_identity)
        self.tenant_count = self.plan.tenants_per_worker
        self.tenant_index = self.slot % self.tenant_count
        self.seq = 0
        self.ready = False
        self.joined = False
        self.stopping = False
        self.ws: websocket.WebSocket | None = None
        self._next: float | None = None
        self.ctx.users.add(self)
        self._ready = Event()
        self._rx = gevent.spawn(self._connection)
        if not self._ready.wait(HELLO_TIMEOUT_S):
            self._fail("hello", "not ready within 10 s (connect and a round trip to self)")

    def on_stop(self) -> None:
        self.stopping = True
        self.ctx.leave(self.tenant, self.user)
        self._rx.kill(block=False)
        if self.ws is not None:
            with contextlib.suppress(Exception):  # a dead socket: nothing left to close
                self.ws.close(timeout=0.5)
        self.ctx.users.discard(self)
        self.ctx.release_slot(self.slot)

    # -- pacing and sending ------------------------------------------------------------

    def wait_time(self) -> float:
        """Absolute schedule at the shared per-user rate; a backlog > 1 s is dropped."""
        rate = self.ctx.per_user_rate
        now = time.monotonic()
        if rate <= 0 or not self.ready:
            self._next = None
            return 0.2 if rate <= 0 else 0.05
        interval = 1.0 / rate
        if self._next is None:
            self._next = now + random.random() * interval
        else:
            self._next += interval
            if self._next < now - 1.0:
                self._next = now
        return max(0.0, self._next - now)

    @task
    def send(self) -> None:
        ws = self.ws
        if not self.ready or ws is None or self.ctx.per_user_rate <= 0:
            return
        ctx, seq = self.ctx, self.seq
        self.seq += 1
        ts = time.time_ns() // 1000
        data = f"[{ctx.index},{self.slot},{seq},{ts}]"
        tw, ti = self.tenant_count, self.tenant_index
        if self.my_teams and random.random() < self.plan.team_share:
            team = random.choice(self.my_teams)
            to = tuple(u * tw + ti for u in self.members[team] & ctx.pool[self.tenant])
            frame = f'{{"type":"team","teams":["{team}"],"data":{data},"id":"{seq}"}}'
            is_team = True
        else:
            pool = ctx.pool_list[self.tenant]
            user = random.choice(pool)
            if user == self.user and len(pool) > 1:
                user = random.choice(pool)
            to = (user * tw + ti,)
            frame = f'{{"type":"direct","to":{user},"data":{data},"id":"{seq}"}}'
            is_team = False
        key = self.key_base | seq
        # Book it before sending: a greenlet switch inside send() could let the
        # receiver see the delivery first.
        ctx.ledger.sent(key, to, ts / 1e6, is_team)
        try:
            ws.send(frame)
        except (websocket.WebSocketException, OSError):
            ctx.ledger.cancel(key)

    # -- connection and receiving ------------------------------------------------------

    def _url(self) -> str:
        base = self.environment.host.rstrip("/")
        if self.ctx.secret:
            from wsop.auth import mint_token

            ttl = int(self.plan.duration + 3600)
            token = mint_token(self.ctx.secret, self.tenant, self.user, ttl_s=ttl)
            return f"{base}/ws?token={token}"
        return f"{base}/ws?tenant={self.tenant}&user={self.user}"

    def _connect(self) -> websocket.WebSocket | None:
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                self._url(),
                timeout=CONNECT_TIMEOUT_S,
                enable_multithread=True,
                skip_utf8_validation=True,
                sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            )
        except (websocket.WebSocketException, OSError) as exc:
            reason = stable_reason(exc)  # no Date header: one failures row per cause
            self.ctx.ledger.connect_failed(reason)
            self._fail("connect", reason, started)
            return None
        ws.settimeout(None)
        self._event("connect", (time.perf_counter() - started) * 1000, 0)
        return ws

    def _connection(self) -> None:
        """Connect, say hello, read until the connection drops; then back off and repeat.

        The backoff restarts only after a connection got as far as ready: a stack that
        accepts the WebSocket and closes it at once (an LB routing to a dead sidecar)
        is a failed attempt, and must not be retried at the first retry's pace forever.
        """
        attempt = -1  # the very first connect goes at once
        while not self.stopping:
            if attempt >= 0:
                gevent.sleep(reconnect_delay(attempt))
            ws = self._connect()
            if ws is None:
                attempt += 1
                continue
            self.ws = ws
            hello = gevent.spawn(self._say_hello, ws)
            self._read(ws)
            hello.kill(block=False)
            self.ws = None
            with contextlib.suppress(Exception):
                ws.shutdown()
            if self.stopping:
                return
            attempt = 0 if self.ready else attempt + 1
            self.ready = False
            self._ready.clear()
            self.ctx.ledger.dropped(self.slot, time.time())
            self._fail("disconnect", "connection closed by the stack")

    def _say_hello(self, ws: websocket.WebSocket) -> None:
        """Send the hello until its echo makes us ready; give up (reconnect) after 10 s."""
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        frame = HELLO % self.user
        while not self.ready:
            if time.monotonic() > deadline:
                self._fail("hello", "no round trip to self within 10 s; reconnecting")
                with contextlib.suppress(Exception):
                    ws.shutdown()
                return
            try:
                ws.send(frame)
            except (websocket.WebSocketException, OSError):
                return  # the reader sees the drop
            self._ready.wait(HELLO_RETRY_S)

    def _hello_answered(self) -> None:
        if self.ready:
            return
        self.ctx.ledger.back(self.slot, time.time())
        if not self.joined:
            self.ctx.join(self.tenant, self.user)
            self.joined = True
        self.ready = True
        self._ready.set()

    def _read(self, ws: websocket.WebSocket) -> None:
        """Read frames in bulk off the raw socket (see `wsop.load.frames`) until it drops."""
        reader = FrameReader()
        try:
            while True:
                chunk = ws.sock.recv(65536)
                if not chunk:
                    return
                for opcode, payload in reader.feed(chunk):
                    if opcode == OP_TEXT:
                        self._on_text(payload)
                    elif opcode == OP_CLOSE:
                        return
                    elif opcode == OP_PING:
                        ws.pong(payload)
        except _DROPPED:
            return  # AttributeError: the socket was closed under us (ws.sock is None)

    def _on_text(self, raw: bytes) -> None:
        ledger = self.ctx.ledger
        obj = _loads(raw)
        kind = obj.get("type")
        if kind == "message":
            data = obj.get("data")
            if type(data) is list and len(data) == 4:
                if data[0] != self.ctx.index:
                    ledger.foreign(data[3] / 1e6)  # another worker's tenants: never ours
                elif ledger.received(self.slot, (data[1] << SEQ_BITS) | data[2], data[3] / 1e6):
                    latency = (time.time_ns() // 1000 - data[3]) / 1000
                    self._event("team" if "teams" in obj else "direct", latency, len(raw))
            elif data == "hello" and obj.get("from") == self.user:
                self._hello_answered()
        elif kind == "ack":
            seq = obj.get("id")
            if isinstance(seq, str) and seq.isdigit():
                ledger.acked(self.key_base | int(seq), obj.get("delivered", 0),
                             obj.get("undelivered", 0))  # fmt: skip
        elif kind == "error":
            ledger.counters.errors += 1
            seq, code = obj.get("id"), str(obj.get("code"))
            if isinstance(seq, str) and seq.isdigit():
                ledger.refused(self.key_base | int(seq), code)
            self._fail("error", code)

    def _event(self, name: str, response_time: float, length: int) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=response_time,
            response_length=length,
            exception=None,
            context={},
        )

    def _fail(self, name: str, reason: str, started: float | None = None) -> None:
        elapsed = 0.0 if started is None else (time.perf_counter() - started) * 1000
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=elapsed,
            response_length=0,
            exception=Exception(reason),
            context={},
        )
