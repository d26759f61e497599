"""The pool's pieces below the loop: its connections, its hooks, and the wire — queued
writes, bulk reads, and the reading of each frame into the ledger.

Split from `wsop.load.pool` (the loop, pacing, connecting) to keep each module one
concern; `Wire` is a mixin of `Pool` and uses its ledger, epoll and hooks. A chat
load's frames are read in place in the received bytes (`_read`: one regex per frame, no
copy, no `FrameReader` call); anything else goes through `FrameReader` and `json`.
Never imports the asyncio servers.
"""

from __future__ import annotations

import json
import random
import re
import ssl
import time
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from wsop.load.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameError, FrameReader
from wsop.load.latency import LatencyBook
from wsop.load.ledger import SEQ_BITS, SEQ_MASK

if TYPE_CHECKING:
    from wsop.load.pool import Pool

EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = 0x001, 0x004, 0x008, 0x010
RECV_BYTES = 65536  # not more: a larger bytes object is an mmap + munmap per recv (7x the cost)
OUT_CAP = 1 << 20  # bytes queued on one connection (the stack is not reading): skip it
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_loads = json.loads
# The stack's own layout of a delivery of ours and of an ack (`wsop.protocol`), read in
# place in the received bytes by one regex (a third of the time of json.loads, and no
# copy of the payload). Anything else (hellos, errors, another key order) goes through
# json.loads, so this is a shortcut, never a different reading. A sender slot or seq of
# more than 9 digits is not taken here: `_our_data` checks it fits its key (a garbled one
# could name another message, or crash the bitmaps).
_FAST = re.compile(
    rb'\{"type":"(?:message","from":-?\d+,"data":\[(\d+),(\d{1,9}),(\d{1,9}),(\d+)\],'
    rb'|ack","id":"(\d+)","delivered":(\d+)(?:,"undelivered":(\d+))?\}\Z)'
)
_fast = _FAST.match
_TEAMS = b'"teams":'
_OFFSET = b',"offset":"'  # a delivery's last key (`wsop.protocol.with_offset`)
# data: [worker, sender slot, seq, sent at µs]: what a delivery needs to find its entry
_TEAM = b'{"type":"team","teams":["%s"],"data":[%d,%d,%d,%d],"id":"%d"}'


def _our_data(data: list[Any]) -> bool:
    """[worker, sender slot, seq, sent at µs] as a generator writes them (a key fits)."""
    return (
        all(type(x) is int and x >= 0 for x in data) and data[1] < 1 << 31 and data[2] <= SEQ_MASK
    )


class Hooks(Protocol):
    """What the pool needs from its world (gevent and locust, or a plain test)."""

    def connect(self, pool: Pool, conn: Conn) -> None:
        """Open `conn`'s WebSocket; then call `pool.attach` or `pool.connect_failed`."""

    def wait(self, timeout: float) -> None:
        """Block until the pool's epoll fd is readable or `timeout` s passed."""

    def sleep(self, seconds: float) -> None: ...

    def event(self, name: str, ms: float) -> None:
        """A successful request for locust's table (e.g. `connect` with its time)."""

    def fail(self, name: str, reason: str, ms: float = 0.0) -> None: ...

    def spawned(self, count: int, of: int) -> None:
        """So many of this worker's connections are up (or gave up their first try)."""

    def flush(self, book: LatencyBook) -> None:
        """Hand the interval's delivery latencies to locust's stats."""


class Conn:
    """One load user: its identity, its socket (None while away) and its state."""

    __slots__ = (
        "slot", "tenant", "user", "tenant_index", "key_base", "my_teams", "members",
        "sock", "fd", "tls", "reader", "out", "seq", "ready", "joined", "attempt",
        "connecting", "first_try", "spawned", "hello_next", "hello_deadline", "offset",
        "since", "replaying",
    )  # fmt: skip

    def __init__(self, slot: int, tenant: str, user: int, tenants: int) -> None:
        self.slot, self.tenant, self.user = slot, tenant, user
        self.tenant_index = slot % tenants  # slot = user * Tw + tenant index (layout)
        self.key_base = slot << SEQ_BITS
        self.my_teams: tuple[str, ...] = ()
        self.members: dict[str, frozenset[int]] = {}
        self.sock: Any = None
        self.fd = -1
        self.tls = False
        self.reader = FrameReader()
        self.out: bytearray | None = None
        self.seq = 0
        self.ready = self.joined = self.connecting = self.spawned = False
        self.attempt = -1  # the very first connect goes at once
        self.first_try: float | None = None
        self.hello_next = self.hello_deadline = 0.0
        # recovery: the last offset received; the one this connection asked `since`; and
        # whether the replay (frames before `recovered`) is still coming
        self.offset: bytes | None = None
        self.since: bytes | None = None
        self.replaying = False


def since_query(conn: Conn) -> str:
    """`&since=<offset>` when `conn` reconnects after a delivery with an offset, else ""."""
    if conn.since is None:
        return ""
    return "&since=" + quote(conn.since.decode("ascii", "replace"), safe="")


def share(connections: int, workers: int, index: int) -> int:
    """Worker `index`'s part of `connections` (the first ones take the remainder)."""
    return connections // workers + (1 if index < connections % workers else 0)


class Wire:
    """Frames in and out of a `Pool`'s connections (a mixin: the pool holds the state)."""

    ep: Any
    masker: Any
    ledger: Any
    latency: LatencyBook
    hooks: Hooks
    index: int
    plan: Any
    members: dict[str, set[int]]
    _index_b: bytes  # `index` as it appears in a payload
    _now_us: int

    def _drop(self, conn: Conn, reason: str = "connection closed by the stack") -> None:
        raise NotImplementedError

    def _hello_answered(self, conn: Conn) -> None:
        raise NotImplementedError

    def _write(self, conn: Conn, frame: bytes) -> bool:
        """Send `frame` or queue it behind what is queued; False if the socket is dead."""
        out = conn.out
        if out is not None:
            out += frame
            return True
        try:
            sent = conn.sock.send(frame)
        except WOULD_BLOCK:
            sent = 0
        except OSError:
            self._drop(conn, "send failed")
            return False
        if sent < len(frame):
            conn.out = bytearray(frame[sent:])
            self.ep.modify(conn.fd, EPOLLIN | EPOLLOUT)
        return True

    def _flush(self, conn: Conn) -> None:
        out = conn.out
        if out is None or conn.sock is None:
            return
        try:
            sent = conn.sock.send(out)
        except WOULD_BLOCK:
            return
        except OSError:
            self._drop(conn, "send failed")
            return
        del out[:sent]
        if not out:
            conn.out = None
            self.ep.modify(conn.fd, EPOLLIN)

    # -- receiving ---------------------------------------------------------------------

    def _read(self, conn: Conn) -> None:
        """One recv; its complete, final, short text frames (all of a chat load) read in
        place here, anything else (and an incomplete last frame) by `FrameReader`."""
        sock = conn.sock
        while sock is not None:
            try:
                data = sock.recv(RECV_BYTES)
            except WOULD_BLOCK:
                return
            except OSError:
                self._drop(conn)
                return
            end = len(data)
            if not end:
                self._drop(conn)
                return
            pos = 0
            if conn.reader.idle:
                while end - pos >= 2 and data[pos] == 0x81:
                    n = data[pos + 1]
                    start = pos + 2
                    if n > 125 or start + n > end:
                        break
                    pos = start + n
                    m = _fast(data, start, pos)
                    if m is None:
                        self._on_text(conn, data[start:pos])
                        if conn.sock is not sock:
                            return  # dropped while handling the batch
                    elif m.lastindex == 4:  # a delivery
                        worker, sender, seq, ts = m.group(1, 2, 3, 4)
                        ts = int(ts)
                        at = data.find(_OFFSET, m.end(), pos)
                        if at >= 0:
                            conn.offset = data[at + 11 : pos - 2]
                        if worker != self._index_b and int(worker) != self.index:
                            self.ledger.foreign(ts / 1e6)
                        elif self.ledger.received(
                            conn.slot,
                            (int(sender) << SEQ_BITS) | int(seq),
                            ts / 1e6,
                            conn.replaying,
                        ):
                            kind = "team" if data.find(_TEAMS, m.end(), pos) >= 0 else "direct"
                            self.latency.samples[kind].append(((self._now_us - ts) << 32) + n)
                    else:
                        self.ledger.acked(conn.key_base | int(m[5]), int(m[6]), int(m[7] or 0))
            if pos < end and not self._slow_frames(conn, sock, data[pos:] if pos else data):
                return
            if not (conn.tls and sock.pending()):
                return  # TLS may hold decrypted bytes the fd does not signal

    def _slow_frames(self, conn: Conn, sock: Any, data: bytes) -> bool:
        """Bytes that are not whole short text frames; False if the connection dropped."""
        try:
            frames = conn.reader.feed(data)
        except FrameError as exc:
            self._drop(conn, f"bad frame: {exc}")
            return False
        for opcode, payload in frames:
            if opcode == OP_TEXT:
                self._on_text(conn, payload)
            elif opcode == OP_CLOSE:
                self._drop(conn)
            elif opcode == OP_PING:
                self._write(conn, self.masker.frame(payload, OP_PONG))
            if conn.sock is not sock:
                return False  # dropped while handling the batch
        return True

    def _on_text(self, conn: Conn, raw: bytes) -> None:
        ledger = self.ledger
        fast = _fast(raw)
        if fast is not None:  # a frame that came through the FrameReader
            if fast.lastindex != 4:
                ledger.acked(conn.key_base | int(fast[5]), int(fast[6]), int(fast[7] or 0))
                return
            worker, sender, seq, ts = (int(x) for x in fast.group(1, 2, 3, 4))
            at = raw.find(_OFFSET, fast.end())
            if at >= 0:
                conn.offset = raw[at + 11 : -2]
            if worker != self.index:
                ledger.foreign(ts / 1e6)
            elif ledger.received(conn.slot, (sender << SEQ_BITS) | seq, ts / 1e6, conn.replaying):
                kind = "team" if _TEAMS in raw else "direct"
                self.latency.add(kind, self._now_us - ts, len(raw))
            return
        try:
            obj = _loads(raw)
            kind = obj.get("type")
        except (ValueError, AttributeError):
            ledger.counters.errors += 1
            self.hooks.fail("error", "malformed frame from the stack")
            return
        if kind == "message":
            data, offset = obj.get("data"), obj.get("offset")
            if isinstance(offset, str):
                conn.offset = offset.encode()
            if type(data) is list and len(data) == 4:
                if not _our_data(data):
                    ledger.counters.unexpected += 1  # no generator writes such data
                    return
                key = (data[1] << SEQ_BITS) | data[2]
                if data[0] != self.index:
                    ledger.foreign(data[3] / 1e6)  # another worker's tenants: never ours
                elif ledger.received(conn.slot, key, data[3] / 1e6, conn.replaying):
                    kind = "team" if "teams" in obj else "direct"
                    self.latency.add(kind, self._now_us - data[3], len(raw))
            elif data == "hello" and obj.get("from") == conn.user:
                self._hello_answered(conn)
        elif kind == "ack":
            seq = obj.get("id")
            if isinstance(seq, str) and seq.isdigit():
                ledger.acked(conn.key_base | int(seq), obj.get("delivered", 0),
                             obj.get("undelivered", 0))  # fmt: skip
        elif kind == "recovered":
            conn.replaying = False
            reason = obj.get("reason")
            ledger.recovered(conn.slot, obj.get("ok") is True, str(reason), time.time())
            if obj.get("ok") is not True:
                self.hooks.fail("recovered", str(reason))
        elif kind == "error":
            ledger.counters.errors += 1
            seq, code = obj.get("id"), str(obj.get("code"))
            if isinstance(seq, str) and seq.isdigit():
                ledger.refused(conn.key_base | int(seq), code)
            self.hooks.fail("error", code)

    def _send_team(self, conn: Conn) -> None:
        """A team message (direct ones are built and sent inline in `Pool._send_due`)."""
        seq = conn.seq
        conn.seq = seq + 1
        ts = time.time_ns() // 1000
        tw, ti = self.plan.tenants_per_worker, conn.tenant_index
        team = random.choice(conn.my_teams)
        to = tuple(u * tw + ti for u in conn.members[team] & self.members[conn.tenant])
        key = conn.key_base | seq
        self.ledger.sent(key, to, ts / 1e6, True)  # booked before it can arrive
        text = _TEAM % (team.encode(), self.index, conn.slot, seq, ts, seq)
        if not self._write(conn, self.masker.frame(text)):
            self.ledger.cancel(key)
