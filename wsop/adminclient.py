"""The one client of the servers' admin HTTP endpoints (`/healthz`, `/connections`,
`/metrics`, `/move`, `/drain`): the launcher, `wsop drain` and the local rebalancer all
ask through it, with the admin token the same way, and tell the same failures apart —
the server answered (with a status, maybe a refusal) or it could not be reached.

The Kubernetes rebalancer reaches the same endpoints through the API server's pod
proxy instead (`wsop.k8s.proxy`): same answers, another transport.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from wsop.errors import WsopError


class AdminUnreachable(WsopError):
    """Nothing answered at that address (refused, timed out, name not found)."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AdminReply:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; `ValueError` if it is not."""
        return json.loads(self.body)


def http_base(url: str) -> str:
    """`http(s)://host:port` for a server's `ws(s)://host:port` (or an http one as is)."""
    url = url.rstrip("/")
    return "http" + url[2:] if url.startswith(("ws://", "wss://")) else url


def get(
    url: str, token: str | None = None, timeout: float = 5.0, ca: str | None = None
) -> AdminReply:
    """GET `url` (http or ws scheme) with `Authorization: Bearer token`; any status is an
    answer, only no answer at all raises (`AdminUnreachable`). `ca`: the CA an https
    (wss) server's certificate is checked against (default: the system's)."""
    request = urllib.request.Request(http_base(url), headers={"Accept": "application/json"})
    return _send(request, url, token, timeout, ca)


def post_json(
    url: str, payload: Any, token: str | None = None, timeout: float = 15.0, ca: str | None = None
) -> AdminReply:
    """POST `payload` as JSON to `url` (`POST /publish`); answers and failures as `get`."""
    request = urllib.request.Request(
        http_base(url),
        data=json.dumps(payload).encode(),
        headers={"Accept": "application/json", "Content-Type": "application/json"},
        method="POST",
    )
    return _send(request, url, token, timeout, ca)


def _send(
    request: urllib.request.Request, url: str, token: str | None, timeout: float, ca: str | None
) -> AdminReply:
    context = ssl.create_default_context(cafile=ca) if ca else None
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return AdminReply(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return AdminReply(exc.code, exc.read())
    except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: a bad URL
        reason = getattr(exc, "reason", exc)
        raise AdminUnreachable(http_base(url), reason) from None


def get_json(
    url: str, token: str | None = None, timeout: float = 5.0, ca: str | None = None
) -> Any | None:
    """The JSON a 200 answer carries, or None for anything else (no answer, a refusal, a
    body that is not JSON): for callers that only poll for a good answer."""
    try:
        reply = get(url, token, timeout, ca)
        return reply.json() if reply.status == 200 else None
    except (AdminUnreachable, ValueError):
        return None
