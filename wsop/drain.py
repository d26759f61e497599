"""The client side of a sidecar's `/drain` hook: ask it to move every connection away,
then wait until it holds none.

Used before a sidecar stops — by `wsop drain` (a Kubernetes `preStop` hook runs it
inside the sidecar's container) — so that taking a pod away closes no client: each one
is moved live, through its LB, instead of being closed with 1012 and reconnecting.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsop import adminclient
from wsop.errors import BackendUnavailable, UsageError, WsopError

POLL_S = 0.2


@dataclass(frozen=True)
class DrainResult:
    sidecar: str
    moving: int
    """Connections asked to move."""
    to: dict[str, int]
    unmovable: int
    """Connections no LB holds (a client connected to the sidecar directly): they stay."""
    remaining: int
    """Connections still held when the wait ended (0: drained)."""
    waited_s: float


def drain(
    base_url: str,
    token: str | None,
    to: list[str] | None = None,
    wait_s: float = 20.0,
    on_tick: Callable[[int, int], None] | None = None,
    ca: str | None = None,
) -> DrainResult:
    """`/drain` on the sidecar at `base_url` (http://host:port), then poll `/connections`
    for up to `wait_s` until it reports 0. `on_tick(remaining, asked)` reports progress."""
    base = base_url.rstrip("/")
    query = f"?to={urllib.parse.quote(','.join(to))}" if to is not None else ""
    asked = _get(base, f"/drain{query}", token, ca)
    started = time.monotonic()
    remaining = moving = int(asked.get("moving", 0))
    name = ""
    while True:
        report = _get(base, "/connections", token, ca)
        name = str(report.get("name", ""))
        remaining = int(report.get("connections", 0))
        if on_tick is not None:
            on_tick(remaining, moving)
        if remaining == 0 or time.monotonic() - started >= wait_s:
            break
        time.sleep(POLL_S)
    return DrainResult(
        name,
        moving,
        dict(asked.get("to", {})),
        int(asked.get("unmovable", 0)),
        remaining,
        round(time.monotonic() - started, 2),
    )


def _get(base: str, path: str, token: str | None, ca: str | None = None) -> dict[str, Any]:
    try:
        reply = adminclient.get(base + path, token, timeout=10, ca=ca)
        payload = reply.json() if reply.status == 200 else None
    except adminclient.AdminUnreachable as exc:
        raise BackendUnavailable(f"cannot reach the sidecar at {base}: {exc.reason}") from None
    except ValueError:
        payload = None
    if reply.status != 200:
        raise _refusal(base, path, reply)
    if not isinstance(payload, dict):
        raise BackendUnavailable(f"{base}{path} answered {reply.body[:80]!r}, not a JSON object")
    return payload


def _refusal(base: str, path: str, reply: adminclient.AdminReply) -> WsopError:
    body = reply.body.decode("utf-8", "replace").strip()
    try:
        text = str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        text = body.splitlines()[0] if body else f"HTTP {reply.status}"
    if reply.status == 401:
        return WsopError(f"{base} refused the admin token ({text}): set WSOP_ADMIN_TOKEN")
    if reply.status == 400:
        return UsageError(f"{base}{path.split('?')[0]}: {text}")
    if reply.status == 404:
        return WsopError(f"{base} has no {path.split('?')[0]} endpoint: is it a wsop sidecar?")
    return WsopError(f"{base}{path.split('?')[0]}: HTTP {reply.status}: {text}")
