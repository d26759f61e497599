"""A WebSocket client with no opinions: it does the HTTP upgrade over a plain socket, then
writes exactly the bytes it is given and reports exactly what comes back.

Two flavours: `probe` (blocking, one connection, for table-driven conformance tests) and
`RawConnection` (asyncio, for fuzzers holding many connections at once). Both answer a
server's close frame with one of their own, as RFC 6455 §5.5.1 asks of any endpoint, so
a well-behaved server can finish its closing handshake and close TCP first (§7.1.1):
`ended == "fin"` is that clean end, "reset" an RST, "timeout" a server that never
closed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Final

from wsop.fuzz.frames import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    ServerFrame,
    ServerFrames,
    client_frame,
    close_payload,
)

HEAD_LIMIT: Final = 64 * 1024


def upgrade_request(path: str, host: str = "127.0.0.1") -> bytes:
    """A minimal, valid RFC 6455 §4.1 opening handshake for `path`."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def parse_status(head: bytes) -> int:
    """The status code of an HTTP response head (0 when it is not one)."""
    parts = head.split(b" ", 2)
    try:
        return int(parts[1]) if parts[0].startswith(b"HTTP/1.") else 0
    except (IndexError, ValueError):
        return 0


def close_reply(code: int | None) -> bytes:
    """The client's answer to a server's close frame with `code`: the same code when it
    may be sent back, else 1000 (a client never sends 1005/1006/1015)."""
    if code is None or code in (1005, 1006, 1015) or not (1000 <= code <= 4999):
        code = 1000
    return client_frame(CLOSE, close_payload(code))


def reply_to_close(frame: ServerFrame) -> bytes:
    return close_reply(frame.close_code)


@dataclass
class Outcome:
    """What one probe connection saw after its upgrade."""

    status: int
    frames: list[ServerFrame] = field(default_factory=list)
    ended: str = "timeout"
    seconds: float = 0.0
    """From the first byte of the probe's data to the end of the connection."""

    @property
    def close(self) -> ServerFrame | None:
        return next((f for f in self.frames if f.opcode == CLOSE), None)

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame (1005: one without a code; None: none)."""
        frame = self.close
        return None if frame is None else frame.close_code

    @property
    def data_frames(self) -> int:
        return sum(f.opcode in (TEXT, BINARY) for f in self.frames)

    @property
    def pongs(self) -> list[bytes]:
        return [f.payload for f in self.frames if f.opcode == PONG]

    @property
    def masked(self) -> int:
        """Frames the server masked (RFC 6455 §5.1: it must not)."""
        return sum(f.masked for f in self.frames)


def connect(
    host: str, port: int, path: str, timeout: float = 5.0, early: bytes = b""
) -> tuple[socket.socket, int, bytes]:
    """Open the socket and do the upgrade; (socket, HTTP status, bytes read past the
    head). `early`: bytes sent with the request, before the 101 (a client should not;
    a server must cope)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(upgrade_request(path, host) + early)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk or len(head) > HEAD_LIMIT:
            break
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    return sock, parse_status(head), rest


ALIVE_PING: Final = b"still there?"


def alive_suffix() -> bytes:
    """What `probe` sends once the probe's own bytes are answered: a ping (its pong
    proves the connection survived) and a normal close (its echo proves a clean end)."""
    return client_frame(PING, ALIVE_PING) + client_frame(CLOSE, close_payload(1000, b"done"))


def probe(
    host: str,
    port: int,
    path: str,
    data: bytes,
    *,
    replies: int = 0,
    timeout: float = 5.0,
    answer_close: bool = True,
    early: bool = False,
    chunk: int = 0,
) -> Outcome:
    """Upgrade, write `data`, and watch what the server does with it.

    Phase 1 reads until the server sends a close frame, or `replies` frames answer
    `data` (data frames and pongs: one per message and per ping it holds), or — when
    none are expected — a short settle time passes. Phase 2, only if the server has not
    closed: `alive_suffix`. Then frames are read (pings answered, the server's close
    answered unless we sent ours first) until the server closes TCP or `timeout`.

    Waiting for the replies matters for a server that handles messages in a task, as
    websockets' own does: a close frame arriving with the data would end the connection
    before the task ever looked at the message (and found, say, invalid UTF-8).

    `answer_close=False` plays a client that never answers the server's close frame:
    a server that failed the connection must close TCP anyway (RFC 6455 §7.1.7).
    `early`: `data` goes with the upgrade request. `chunk`: `data` is written `chunk`
    bytes at a time (TCP_NODELAY: small segments, frames cut anywhere)."""
    sock, status, rest = connect(host, port, path, timeout, data if early else b"")
    out = Outcome(status)
    if status != 101:
        sock.close()
        out.ended = "refused"
        return out
    reader = ServerFrames()
    started = time.monotonic()
    deadline = started + timeout
    sent_close = any(  # a close frame a server must take as one (§5.5)
        f.opcode == CLOSE and f.fin and len(f.payload) <= 125 for f in ServerFrames().feed(data)
    )
    answered = sent_close or not answer_close
    settle = time.monotonic() + (min(2.0, timeout) if replies else 0.15)
    suffix = not sent_close

    def answers() -> int:
        return sum(f.opcode in (TEXT, BINARY, PONG) for f in out.frames)

    try:
        step = chunk or len(data) or 1
        for at in range(0, 0 if early else len(data), step):
            sock.sendall(data[at : at + step])
        while True:
            now = time.monotonic()
            if suffix and (answers() >= replies > 0 or now >= settle):
                suffix = False
                answered = True  # our close goes first: the server's is its answer
                sock.sendall(alive_suffix())
            left = (settle if suffix else deadline) - now
            if left <= 0:
                return out
            if rest:
                got, rest = rest, b""
            else:
                sock.settimeout(left)
                try:
                    got = sock.recv(65536)
                except TimeoutError:
                    continue
            if not got:
                out.ended = "fin"
                return out
            for frame in reader.feed(got):
                out.frames.append(frame)
                if frame.opcode == CLOSE:
                    suffix = False
                    if not answered:
                        answered = True
                        sock.sendall(reply_to_close(frame))
                elif frame.opcode == PING and not answered:
                    sock.sendall(client_frame(PONG, frame.payload))
    except (ConnectionResetError, BrokenPipeError):
        out.ended = "reset"
        return out
    finally:
        out.seconds = time.monotonic() - started
        sock.close()


class RawConnection:
    """An asyncio raw client connection (see the module docstring), for fuzzers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = ServerFrames()

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, timeout: float = 5.0
    ) -> tuple[RawConnection | None, int]:
        """Connect and upgrade: (connection, 101) or (None, the refusal's status)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(upgrade_request(path, host))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except BaseException:
            writer.transport.abort()
            raise
        status = parse_status(head)
        if status != 101:
            writer.transport.abort()
            return None, status
        return cls(reader, writer), status

    def abort(self) -> None:
        self.writer.transport.abort()
