"""A cheap protocol-speaking sink for measuring load generators (bench/loadgen.py).

    python bench/_sink.py --port 8800          # ws://127.0.0.1:8800/ws?tenant=T&user=U

Speaks just enough of the wire protocol (DESIGN.md) to be a fair target for every
generator, and as little else as possible so that it is never the bottleneck: a raw
asyncio protocol on uvloop, frames parsed by hand (unmasked with websockets' C
`apply_mask`), every connection's outgoing frames gathered and written once per loop
turn. Per client frame:

- `direct` to user U of the sender's tenant: `{"type":"message",…}` to each of U's
  connections, then `{"type":"ack","id":…,"delivered":N,"undelivered":0|1}`;
- anything else (team messages need the ACL): an `error` frame `bad_request`;
- ping → pong, close → close.

No ACL, no auth (`?tenant=&user=`, like an `--insecure` stack), no Redis. `GET /stats`
answers JSON counters (messages, delivered, undelivered, connections, the sink's CPU
seconds), which is how the bench counts what a generator achieved.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import signal
import time
from urllib.parse import parse_qs, urlsplit

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the pure-Python fallback
    from websockets.utils import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_dumps = json.dumps
_loads = json.loads


def server_frame(payload: bytes, opcode: int = 1) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


class Hub:
    def __init__(self) -> None:
        self.users: dict[tuple[str, int], list[Conn]] = {}
        self.dirty: list[Conn] = []
        self.scheduled = False
        self.stats = dict.fromkeys(("messages", "delivered", "undelivered", "errors"), 0)
        self.conns = 0
        self.loop = asyncio.get_event_loop()

    def queue(self, conn: Conn, frame: bytes) -> None:
        if not conn.pending:
            self.dirty.append(conn)
            if not self.scheduled:
                self.scheduled = True
                self.loop.call_soon(self.flush)
        conn.pending.append(frame)

    def flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.write(b"".join(conn.pending))
            conn.pending = []


class Conn(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.key: tuple[str, int] | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is not None:
            peers = self.hub.users.get(self.key, [])
            if self in peers:
                peers.remove(self)
            if not peers:
                self.hub.users.pop(self.key, None)
            self.hub.conns -= 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            self._handshake()
        if self.open:
            self._frames()

    def _handshake(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        target = head[0].split(" ")[1] if len(head[0].split(" ")) > 1 else "/"
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        url = urlsplit(target)
        assert self.transport is not None
        if url.path == "/stats":
            body = _dumps({**self.hub.stats, "connections": self.hub.conns,
                           "cpu_s": time.process_time()}).encode()  # fmt: skip
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip
            self.transport.close()
            return
        query = parse_qs(url.query)
        key = headers.get("sec-websocket-key")
        try:
            tenant, user = query["tenant"][0], int(query["user"][0])
        except (KeyError, ValueError):
            tenant, user = "", -1
        if url.path != "/ws" or not key or user < 0:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.open = True
        self.key = (tenant, user)
        self.hub.users.setdefault(self.key, []).append(self)
        self.hub.conns += 1

    def _frames(self) -> None:
        buf, pos, end = self.buf, 0, len(self.buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if end - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            masked = b1 & 0x80
            if end - pos < head + (4 if masked else 0) + n:
                break
            if masked:
                key = bytes(buf[pos + head : pos + head + 4])
                head += 4
                payload = apply_mask(bytes(buf[pos + head : pos + head + n]), key)
            else:
                payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if opcode == 1:
                self._text(payload)
            elif opcode == 8:
                self.hub.queue(self, server_frame(payload[:2], 8))
                self.hub.flush()
                if self.transport is not None:
                    self.transport.close()
                break
            elif opcode == 9:
                self.hub.queue(self, server_frame(payload, 10))
        del buf[:pos]

    def _text(self, raw: bytes) -> None:
        hub, stats = self.hub, self.hub.stats
        try:
            msg = _loads(raw)
            kind, mid = msg.get("type"), msg.get("id")
        except (ValueError, AttributeError):
            stats["errors"] += 1
            return
        ident = _dumps(mid)
        if kind != "direct" or type(msg.get("to")) is not int:
            stats["errors"] += 1
            hub.queue(self, server_frame(
                b'{"type":"error","id":%s,"code":"bad_request","message":"direct only"}'
                % ident.encode()))  # fmt: skip
            return
        stats["messages"] += 1
        assert self.key is not None
        tenant, me = self.key
        peers = hub.users.get((tenant, msg["to"]), ())
        if peers:
            out = server_frame(
                f'{{"type":"message","from":{me},"data":{_dumps(msg.get("data"))},'
                f'"id":{ident},"ts":{time.time_ns() // 1_000_000}}}'.encode()
            )
            for peer in peers:
                hub.queue(peer, out)
            stats["delivered"] += 1
        else:
            stats["undelivered"] += 1
        ack = f'{{"type":"ack","id":{ident},"delivered":{1 if peers else 0},'
        hub.queue(self, server_frame(f'{ack}"undelivered":{0 if peers else 1}}}'.encode()))


async def serve(port: int, host: str = "127.0.0.1") -> None:
    hub = Hub()
    server = await asyncio.get_running_loop().create_server(
        lambda: Conn(hub), host, port, backlog=4096
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"sink listening on ws://{host}:{port}/ws pid {os.getpid()}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
