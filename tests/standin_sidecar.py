"""A stand-in sidecar for LB and launcher tests: the process contract, none of the logic.

Same flags as `wsop sidecar` (unknown ones ignored), same admin endpoints, SIGTERM closes
clients with 1012 and exits 0. On /ws it answers every text message `m` with
`"<name>:<m>"` (bytes: `b"<name>:" + m`), so a test can see which sidecar it reached,
plus a few commands:

- `whoami` → JSON {"sidecar", "path", "auth"} (what the LB forwarded);
- `close:CODE` → closes with CODE, reason "bye";
- `die` → exits at once without a close frame (a sidecar that vanished);
- `push:N` → sends N messages "<name>:push:i" (backlog for drain tests);
- `slowpush:N` → the same, 30 ms apart, in the background (a sidecar still delivering);
- `sendmove:NAME URL` → sends the sidecar→LB control frame "\\x00wsop:move NAME URL".

Like a real sidecar, the LB's `"\\x00wsop:moved"` (the client moved away) is never
echoed: the connection is closed with 1000 "moved" once its background pushes are done.

`/trunk` takes an LB's trunk (`wsop lb --trunks N`): its channels are /ws connections
like any other (`wsop.trunk.serving`, as the real sidecar does); with
`STANDIN_NO_TRUNKS=1` it answers 404, as a sidecar from before trunks.

`?reject=STATUS` on the handshake answers that HTTP status instead;
`?reject_moved=STATUS` does so only for a moved connection (the LB's `X-Wsop-Lb` header
names the sidecar it moves from).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (run as a script: this wsop)
from wsop.detach import Detachable
from wsop.trunk.mux import TrunkStats
from wsop.trunk.serving import AcceptingTrunk, connection_factory


class StandinConnection(Detachable, ServerConnection):
    """`/trunk` sockets are detached into trunks; everything else stays websockets'."""

    def _relayable(self) -> bool:
        return self.request is not None and urlsplit(self.request.path).path == "/trunk"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?", default="sidecar")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    asyncio.run(run(args.name, args.host, args.port))


async def run(name: str, host: str, port: int) -> None:
    clients: set[ServerConnection] = set()
    admin = os.environ.get("WSOP_ADMIN_TOKEN")

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/healthz":
            return _json(conn, {"status": "ok", "name": name})
        if url.path in ("/connections", "/metrics"):
            if admin and request.headers.get("Authorization") != f"Bearer {admin}":
                return conn.respond(401, "admin token required\n")
            if url.path == "/metrics":
                return conn.respond(200, f"standin_connections {len(clients)}\n")
            return _json(conn, {"name": name, "connections": len(clients), "users": []})
        if url.path == "/trunk":
            if os.environ.get("STANDIN_NO_TRUNKS"):  # an older sidecar
                return conn.respond(404, "not found\n")
            if admin and request.headers.get("Authorization") != f"Bearer {admin}":
                return conn.respond(401, "admin token required\n")
            return None
        if url.path != "/ws":
            return conn.respond(404, "not found\n")
        params = parse_qs(url.query)
        reject = params.get("reject")
        lb = request.headers.get("X-Wsop-Lb", "")  # (a stand-in does not verify it)
        if len(lb.split(" ")) == 4 and lb.split(" ")[2] != "-":  # a moved client
            reject = reject or params.get("reject_moved")
        if reject:
            return conn.respond(int(reject[0]), "rejected by stand-in\n")
        return None

    pushes: dict[ServerConnection, set[asyncio.Task[None]]] = {}

    async def close_when_done(conn: ServerConnection) -> None:
        await asyncio.sleep(0.1)
        await asyncio.gather(*pushes.get(conn, ()))
        await conn.close(1000, "moved")

    trunk_stats = TrunkStats()
    channels: list = []  # the factory of channel connections, once the server exists

    async def handler(conn: ServerConnection) -> None:
        if conn.request is not None and urlsplit(conn.request.path).path == "/trunk":
            assert isinstance(conn, StandinConnection)
            conn.detach(AcceptingTrunk(trunk_stats, "lb", channels[0]))
            return
        clients.add(conn)
        try:
            async for message in conn:
                if message == "\x00wsop:moved":
                    asyncio.ensure_future(close_when_done(conn))
                elif isinstance(message, bytes):
                    await conn.send(name.encode() + b":" + message)
                elif message == "whoami":
                    auth = conn.request.headers.get("Authorization") if conn.request else None
                    path = conn.request.path if conn.request else None
                    lb = conn.request.headers.get("X-Wsop-Lb") if conn.request else None
                    info = {"sidecar": name, "path": path, "auth": auth, "lb": lb}
                    await conn.send(json.dumps(info))
                elif message.startswith("close:"):
                    await conn.close(int(message[6:]), "bye")
                elif message == "die":
                    os._exit(3)
                elif message.startswith("sendmove:"):
                    await conn.send("\x00wsop:move " + message[len("sendmove:") :])
                elif message.startswith("slowpush:"):
                    task = asyncio.ensure_future(slowpush(conn, int(message[9:])))
                    pushes.setdefault(conn, set()).add(task)
                elif message.startswith("push:"):
                    for i in range(int(message[5:])):
                        await conn.send(f"{name}:push:{i}")
                else:
                    await conn.send(f"{name}:{message}")
        finally:
            clients.discard(conn)
            pushes.pop(conn, None)

    async def slowpush(conn: ServerConnection, count: int) -> None:
        for i in range(count):
            await asyncio.sleep(0.03)
            await conn.send(f"{name}:push:{i}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with serve(
        handler, host, port, process_request=process_request, create_connection=StandinConnection
    ) as server:
        channels.append(connection_factory(server, create_connection=StandinConnection))
        await stop.wait()
        server.close(close_connections=False)
        await asyncio.gather(*(c.close(1012, "sidecar restarting") for c in list(clients)))
        await server.wait_closed()


def _json(conn: ServerConnection, payload: object) -> Response:
    response = conn.respond(200, json.dumps(payload) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


if __name__ == "__main__":
    main()
