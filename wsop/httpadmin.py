"""Plain HTTP answers on a WebSocket port (`process_request`), shared by the LB and sidecars.

`/healthz` is open (a liveness probe carries no credentials); everything else needs
``Authorization: Bearer $WSOP_ADMIN_TOKEN`` when that variable is set, because
connection counts per sidecar leak the shape of the fleet.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from wsop.auth import single_header
from wsop.lbsignal import HEADER as LB_HEADER

ADMIN_TOKEN_ENV: Final = "WSOP_ADMIN_TOKEN"
ADMIN_HEADER: Final = "X-Wsop-Admin-Token"
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def admin_token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    return (os.environ if environ is None else environ).get(ADMIN_TOKEN_ENV) or None


SINGLE_HEADERS: Final = ("Authorization", ADMIN_HEADER, LB_HEADER)
"""Headers the servers read as one value: given twice, they are ambiguous (which one did
the proxy in front check?), so the request is refused with 400 before anything reads
them (websockets' `Headers.get` would raise MultipleValuesError: a 500 and a traceback)."""


def request_refusal(request: Request) -> str | None:
    """Why a request is malformed (the servers answer 400 with it), or None."""
    for name in SINGLE_HEADERS:
        count = len(request.headers.get_all(name))
        if count > 1:
            return f"the {name} header is given {count} times; send it once"
    target = request.path
    if not target.startswith("/") or target.startswith("//"):
        return f"malformed request target {target[:100]!r}: expected /path?query"
    return None


def admin_refusal(headers: Mapping[str, str], token: str | None) -> str | None:
    """Why an admin request is refused, or None when it may proceed.

    Accepts `Authorization: Bearer TOKEN`, or `X-Wsop-Admin-Token: TOKEN` for calls that
    come through the Kubernetes API server's pods/proxy, which consumes `Authorization`.
    A header given twice raises BadRequest (`request_refusal` answers it first).
    """
    if not token:
        return None
    credentials = (single_header(headers, ADMIN_HEADER) or "").strip()
    if not credentials:
        given = single_header(headers, "Authorization") or ""
        scheme, _, bearer = given.strip().partition(" ")
        if scheme.lower() != "bearer" or not bearer:
            return f"admin endpoints need 'Authorization: Bearer ${ADMIN_TOKEN_ENV}'"
        credentials = bearer.strip()
    if not hmac.compare_digest(credentials.encode(), token.encode()):
        return "wrong admin token"
    return None


def text_response(
    connection: ServerConnection, status: int, text: str, content_type: str | None = None
) -> Response:
    """A plain HTTP answer instead of the WebSocket handshake (one line for errors)."""
    response = connection.respond(status, text if text.endswith("\n") else text + "\n")
    if content_type:
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type
    return response


def json_response(connection: ServerConnection, status: int, payload: Any) -> Response:
    return text_response(connection, status, json.dumps(payload), "application/json")


def method_refusal(connection: ServerConnection, method: str) -> Response:
    """405 for a method other than GET on a handshake or admin path (before any work:
    a POST to /ws must not dial a sidecar first and be refused after)."""
    response = text_response(connection, 405, f"{method} is not allowed here: use GET")
    response.headers["Allow"] = "GET"
    return response


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target. Not `urlsplit`: it reads "//[x" as a broken
    IPv6 host and raises (this runs before any refusal can be answered)."""
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


def path_of(request: Request) -> str:
    return split_target(request.path)[0]


def query(request: Request) -> dict[str, str]:
    """The request's query parameters (last value wins)."""
    return {
        k: v[-1] for k, v in parse_qs(split_target(request.path)[1], keep_blank_values=True).items()
    }


def select_subprotocol(connection: ServerConnection, offered: Sequence[str]) -> str | None:
    """`wsop.v1` when the client offers it (first choice whatever else it offers); no
    subprotocol when it offers none; a 400 naming what we speak when it offers only
    others (RFC 6455 §4.2.2: it would fail the connection on an answer without one)."""
    from websockets.exceptions import NegotiationError

    from wsop.protocol import SUBPROTOCOL

    if not offered:
        return None
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    raise NegotiationError(
        f"unsupported subprotocol {', '.join(offered)[:80]}; this server speaks {SUBPROTOCOL}"
    )


def drop_subprotocol_callback(protocol: object) -> None:
    """Forget the `select_subprotocol` callback websockets bound to a handshake's protocol.

    The bound callback closes over the asyncio connection that owns the protocol: a
    cycle the servers' detached data phase would keep alive (the sidecar's session holds
    the protocol) or leave for the cycle collector (the LB), ~1–3.5 KB per idle client.
    Call it once the handshake is over; the class's own method takes its place again."""
    vars(protocol).pop("select_subprotocol", None)


def origins_option(allowed: Sequence[str] | None) -> list[str | None] | None:
    """websockets' `origins=` for `--allowed-origins`: None checks nothing; a list admits
    those origins and clients that send no `Origin` (non-browser clients, the LB)."""
    if allowed is None:
        return None
    return [*allowed, None]
