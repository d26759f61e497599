"""The locust side of the generator: one pool user per worker process, and its gevent glue.

gevent world only (imported by the locustfile after locust monkey-patched the standard
library). Locust spawns exactly one `WsopPool` user per worker process (the shape asks
for as many users as there are workers); that user runs the worker's `Pool`
(`wsop.load.pool`), which owns the worker's whole share of the connections and paces
them in one loop. What the pool needs from this world is here (`GeventHooks`):

- handshakes: a greenlet per connection attempt runs websocket-client's handshake
  (cooperative under gevent), then hands the plain socket over to the pool — detached
  from gevent's socket wrapper so every later `send`/`recv` is one C call;
- waiting: while handshakes are in flight the pool's epoll fd is watched by the gevent
  hub (the handshakes' greenlets need it); once none is, the loop blocks in the pool's
  own epoll for a few ms at most, pauses between ticks with a plain sleep, and gives
  the hub a turn at least every `HUB_TURN_S` (locust's heartbeats and messages keep
  flowing). Watching an epoll fd from the hub's epoll costs an `EPOLL_CTL_ADD` per
  wait, and the kernel checks every socket of the nested set for loops on each: ~8% of
  a worker's CPU at 8K msg/s;
- locust: `connect` rows and failures as request events (rare), delivery latencies in
  bulk once a second (`wsop.load.latency.flush`), the connect progress to the master
  (`wsop_spawned`).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import gevent
import websocket
from gevent.hub import Waiter, get_hub
from gevent.monkey import get_original
from locust import User, constant, task

from wsop.gcpolicy import WORKER_YOUNG, quiet_gc
from wsop.load.failures import stable_reason
from wsop.load.latency import LatencyBook, flush
from wsop.load.pool import Conn, Pool
from wsop.load.profiles import LoadPlan
from wsop.load.wire import since_query

CONNECT_TIMEOUT_S = 10.0
BLOCK_MAX_S = 0.005  # the longest the pool blocks in its own epoll, outside the hub
HUB_TURN_S = 0.01  # the hub runs at least this often (heartbeats, the master's messages)
# A hub turn sleeps, however briefly: gevent.sleep(0) returns before the hub's timers
# run (locust's heartbeat is a timer), a positive sleep goes through them.
HUB_TURN_SLEEP_S = 0.0002
_RawSocket = get_original("socket", "socket")
_sleep = get_original("time", "sleep")  # blocks the process, not just the greenlet


def detach(ws: websocket.WebSocket) -> tuple[Any, bool]:
    """The handshaken connection as a non-blocking socket for the pool, and whether it
    is TLS. A plain one leaves gevent's wrapper (its fd moves to a stdlib socket); a TLS
    one keeps gevent's SSLSocket, whose state cannot move."""
    sock = ws.sock
    if isinstance(sock, ssl.SSLSocket):
        sock.setblocking(False)
        return sock, True
    raw = _RawSocket(fileno=sock.detach())
    raw.setblocking(False)
    return raw, False


class GeventHooks:
    """The pool's world inside a locust process (see the module docstring)."""

    def __init__(self, environment: Any, secret: str | None) -> None:
        self.environment = environment
        self.secret = secret
        self.hub = get_hub()
        self._io: Any = None
        self._ep: Any = None
        self._handshakes = 0  # in flight: their greenlets need the hub to wait
        self._hub_at = 0.0

    def url(self, plan: LoadPlan, conn: Conn) -> str:
        base = self.environment.host.rstrip("/")
        if self.secret:
            from wsop.auth import mint_token

            ttl = int(plan.duration + 3600)
            token = mint_token(self.secret, conn.tenant, conn.user, ttl_s=ttl)
            return f"{base}/ws?token={token}{since_query(conn)}"
        return f"{base}/ws?tenant={conn.tenant}&user={conn.user}{since_query(conn)}"

    def connect(self, pool: Pool, conn: Conn) -> None:
        self._handshakes += 1
        gevent.spawn(self._handshake, pool, conn)

    def _handshake(self, pool: Pool, conn: Conn) -> None:
        try:
            self._shake(pool, conn)
        finally:
            self._handshakes -= 1

    def _shake(self, pool: Pool, conn: Conn) -> None:
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                self.url(pool.plan, conn),
                timeout=CONNECT_TIMEOUT_S,
                skip_utf8_validation=True,
                sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            )
            sock, tls = detach(ws)
        except (websocket.WebSocketException, OSError) as exc:
            ms = (time.perf_counter() - started) * 1000
            pool.connect_failed(conn, stable_reason(exc), ms)  # no Date header: one row a cause
            return
        pool.attach(conn, sock, tls, (time.perf_counter() - started) * 1000)

    def watch(self, ep: Any) -> None:
        self._ep = ep
        self._io = self.hub.loop.io(ep.fileno(), 1)

    def _hub_turn_due(self) -> bool:
        return self._handshakes > 0 or time.monotonic() - self._hub_at >= HUB_TURN_S

    def wait(self, timeout: float) -> None:
        if not self._handshakes:
            self._ep.poll(min(timeout, BLOCK_MAX_S), 1)  # level-triggered: nothing taken
            self.sleep(0)  # the hub's turn, if one is due
            return
        waiter = Waiter(self.hub)
        timer = self.hub.loop.timer(timeout)
        self._io.start(waiter.switch, None)
        timer.start(waiter.switch, None)
        try:
            waiter.get()
        finally:
            self._io.stop()
            timer.stop()
            timer.close()

    def sleep(self, seconds: float) -> None:
        """The loop's pause between ticks (0: a behind loop letting the hub breathe).
        Through the hub only when a turn is due: a trip through it costs more than the
        pause's own syscall."""
        if not self._hub_turn_due():
            if seconds > 0:
                _sleep(seconds)
            return
        gevent.sleep(max(seconds, HUB_TURN_SLEEP_S))
        self._hub_at = time.monotonic()

    def event(self, name: str, ms: float) -> None:
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=ms, response_length=0,
            exception=None, context={},
        )  # fmt: skip

    def fail(self, name: str, reason: str, ms: float = 0.0) -> None:
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=ms, response_length=0,
            exception=Exception(reason), context={},
        )  # fmt: skip

    def spawned(self, count: int, of: int) -> None:
        runner = self.environment.runner
        if runner is not None:
            runner.send_message("wsop_spawned", {"spawned": count, "of": of})

    def flush(self, book: LatencyBook) -> None:
        flush(book, self.environment.stats)


_pool: Pool | None = None


def context(environment: Any) -> Pool:
    """This process's pool, built on first use (workers learn the plan at spawn)."""
    global _pool
    if _pool is None:
        import os

        plan = LoadPlan.from_json(environment.parsed_options.wsop_config)
        index = max(getattr(environment.runner, "worker_index", 0), 0)
        hooks = GeventHooks(environment, os.environ.get("WSOP_SECRET") or None)
        _pool = Pool(plan, index, hooks)
        hooks.watch(_pool.ep)
        quiet_gc(WORKER_YOUNG)
    return _pool


def current_context() -> Pool | None:
    return _pool


class WsopPool(User):
    """All of this worker's chat users: one locust user that drives the worker's pool."""

    wait_time = constant(1)

    def on_start(self) -> None:
        self.pool = context(self.environment)
        self.owner = False

    @task
    def drive(self) -> None:
        if self.pool.running and not self.owner:  # a second user here: one pool is all
            gevent.sleep(1)
            return
        self.owner = True
        self.pool.run()

    def on_stop(self) -> None:
        if self.owner:
            self.pool.stop()
