"""Upstream app mode: the sidecar mirrors each client to the app container, and frames the
app sends are routed as the user's own (same protocol, same ACL), acks going to the app."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from websockets.sync.server import ServerConnection, serve

from tests.stack_helpers import Sidecars, client, drain, recv_json, seed_tenant


class App:
    """A stand-in app container: answers a mirrored "ping" with its own direct message."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict]] = []
        self.replies: list[dict] = []
        self.server = serve(self.handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        tenant, user = query["tenant"][0], query["user"][0]
        for raw in ws:
            frame = json.loads(raw)
            if frame.get("type") in ("ack", "error"):
                self.replies.append(frame)
                continue
            self.seen.append((tenant, user, frame))
            if frame.get("data") == "ping":
                reply = {"type": "direct", "to": frame["to"], "data": "app:pong", "id": "a1"}
                ws.send(json.dumps(reply))
            if frame.get("data") == "team-ping":
                ws.send(json.dumps({"type": "team", "teams": ["ops"], "data": 1, "id": "a2"}))


@pytest.fixture
def app_stack(redis_url: str, tmp_path: Path) -> Iterator[tuple[Sidecars, App]]:
    app = App()
    stack = Sidecars(redis_url, tmp_path / "members.json", {})
    stack.write_members()
    stack.start("s0", tmp_path, ["--upstream", app.url])
    stack.write_members()
    time.sleep(0.5)
    yield stack, app
    stack.stop_all()
    app.server.shutdown()


def test_app_sees_client_frames_and_speaks_as_the_user(app_stack, r: redis.Redis) -> None:
    stack, app = app_stack
    seed_tenant(r, "A", {"eng": {1, 2}})
    url = stack.procs["s0"].url
    alice, bob = client(url, "A", 1), client(url, "A", 2)
    time.sleep(0.2)
    alice.send(json.dumps({"type": "direct", "to": 2, "data": "ping", "id": "c1"}))
    assert recv_json(alice) == {"type": "ack", "id": "c1", "delivered": 1}
    got = sorted(f["data"] for f in [recv_json(bob), recv_json(bob)])
    assert got == ["app:pong", "ping"]  # the app's frame arrives as alice's own
    assert ("A", "1", {"type": "direct", "to": 2, "data": "ping", "id": "c1"}) in app.seen
    deadline = time.monotonic() + 3
    while not app.replies and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.replies == [{"type": "ack", "id": "a1", "delivered": 1}]  # ack went to the app
    assert drain(alice, 0.2) == []  # and not to the client

    # The app is bound by the user's ACL: alice is not in team "ops".
    alice.send(json.dumps({"type": "direct", "to": 2, "data": "team-ping", "id": "c2"}))
    deadline = time.monotonic() + 3
    while len(app.replies) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.replies[1]["code"] in ("forbidden", "not_found") and app.replies[1]["id"] == "a2"
    alice.close()
    bob.close()
