"""Plain-HTTP answers on a WebSocket port (websockets' `process_request` hook).

Both servers (LB and sidecar) answer `/healthz`, `/metrics` and their JSON admin
endpoints on the same port they serve WebSockets on; this module builds those replies
and checks the admin token, so both do it the same way.
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response


def respond(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, body)


def json_response(status: int, payload: Any) -> Response:
    return respond(status, json.dumps(payload).encode() + b"\n", "application/json")


def text_response(status: int, text: str) -> Response:
    return respond(status, text.encode() + b"\n", "text/plain; charset=utf-8")


def admin_allowed(request: Request, admin_token: str | None) -> bool:
    """True when no admin token is configured or the request carries it (header or ?admin=)."""
    if not admin_token:
        return True
    auth = request.headers.get("Authorization", "")
    offered = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not offered:
        offered = query(request).get("admin", "")
    return hmac.compare_digest(offered.encode(), admin_token.encode())


def path_of(request: Request) -> str:
    return urlsplit(request.path).path


def query(request: Request) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(request.path).query).items()}
