"""The one admin-HTTP client: any status is an answer, no answer is `AdminUnreachable`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from wsop import adminclient
from wsop.local.redis_binary import free_port


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        auth = self.headers.get("Authorization")
        status, body = (200, {"ok": True}) if auth == "Bearer t" else (401, {"error": "no"})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_answers_refusals_and_silence() -> None:
    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"ws://127.0.0.1:{server.server_port}/connections"  # a ws:// base works
        assert adminclient.get(url, "t").json() == {"ok": True}
        refused = adminclient.get(url, "wrong")
        assert refused.status == 401 and refused.json() == {"error": "no"}
        assert adminclient.get_json(url, "t") == {"ok": True}
        assert adminclient.get_json(url, "wrong") is None
    finally:
        server.shutdown()
    with pytest.raises(adminclient.AdminUnreachable, match="cannot reach http://127.0.0.1"):
        adminclient.get(f"http://127.0.0.1:{free_port()}/healthz", timeout=1)
    assert adminclient.get_json(f"http://127.0.0.1:{free_port()}/healthz", timeout=1) is None
