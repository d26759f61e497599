"""The HTTP APIs for backends — `POST /publish`, `GET /presence`, `GET /presence/count` —
as the LB and the sidecars both read them: requests, credentials and answers, no I/O.

Every answer is JSON, errors included, in the WebSocket protocol's own shapes: an ack
`{"type":"ack","id":…,"delivered":N,"undelivered":M}` or an error
`{"type":"error","id":…,"code":…,"message":…}` with the protocol's codes (plus
`unauthorized`), each on the HTTP status that says the same (`HTTP_STATUS`).
docs/protocol.md ("Publish API", "Presence API") is the contract.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from wsop import protocol
from wsop.auth import AuthError, TokenVerifier, single_header
from wsop.errors import WsopError
from wsop.httpadmin import json_response, split_target
from wsop.httpbody import BodyError, BodyReading
from wsop.names import IdMode
from wsop.protocol import (
    BAD_REQUEST,
    FORBIDDEN,
    INTERNAL,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_LARGE,
    TOO_MANY_RECIPIENTS,
    UNAUTHORIZED,
    UNAVAILABLE,
    ClientMessage,
    ProtocolError,
)
from wsop.publisher import Publisher, publisher_from_headers

PUBLISH_PATH: Final = "/publish"
PRESENCE_PATH: Final = "/presence"
PRESENCE_COUNT_PATH: Final = "/presence/count"
METHODS: Final = {
    PUBLISH_PATH: ("POST",),
    PRESENCE_PATH: ("GET", "POST"),  # POST: a user list too long for a request line
    PRESENCE_COUNT_PATH: ("GET",),
}
"""The API paths and the methods each takes (anything else: 405 with `Allow`)."""
MAX_PRESENCE_USERS: Final = 1000
"""Users one presence request may ask about (a request line holds ~8 KiB of them)."""
MAX_PRESENCE_BODY: Final = 64 * 1024
HTTP_STATUS: Final = {
    BAD_REQUEST: 400,
    UNAUTHORIZED: 401,
    FORBIDDEN: 403,
    NOT_FOUND: 404,
    TOO_LARGE: 413,
    TOO_MANY_RECIPIENTS: 422,
    RATE_LIMITED: 429,
    INTERNAL: 500,
    UNAVAILABLE: 503,
}
"""The HTTP status each error code is answered with."""
CODE_OF_STATUS: Final = {status: code for code, status in HTTP_STATUS.items()}


class ApiError(WsopError):
    """A request refused: becomes one JSON error answer (never a traceback)."""

    def __init__(
        self,
        code: str,
        message: str,
        id: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.id = code, message, id
        self.status = status or HTTP_STATUS.get(code, 400)
        self.headers = dict(headers or {})

    def payload(self) -> dict[str, Any]:
        return {"type": "error", "id": self.id, "code": self.code, "message": self.message}

    @classmethod
    def from_protocol(cls, exc: ProtocolError) -> ApiError:
        return cls(exc.code, exc.message, exc.id)

    @classmethod
    def from_auth(cls, exc: AuthError) -> ApiError:
        code = {400: BAD_REQUEST, 403: FORBIDDEN}.get(exc.http_status, UNAUTHORIZED)
        return cls(code, str(exc), status=exc.http_status)


def respond(connection: ServerConnection, status: int, payload: Any) -> Response:
    return json_response(connection, status, payload)


def refuse(connection: ServerConnection, error: ApiError) -> Response:
    response = json_response(connection, error.status, error.payload())
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def check_method(path: str, method: str) -> None:
    """405 with `Allow` for a method the path does not take."""
    allowed = METHODS[path]
    if method not in allowed:
        allow = ", ".join(allowed)
        raise ApiError(
            BAD_REQUEST, f"{path} takes {allow}, not {method}", status=405, headers={"Allow": allow}
        )


def check_json_body(headers: Mapping[str, str]) -> None:
    """415 unless the body is declared `application/json` (parameters such as a charset
    may follow; the body is read as UTF-8 whatever they say)."""
    try:
        value = single_header(headers, "Content-Type")
    except AuthError as exc:  # given twice
        raise ApiError(BAD_REQUEST, str(exc)) from None
    media = (value or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        got = f"{value!r}" if value else "none"
        raise ApiError(BAD_REQUEST, f"Content-Type must be application/json, got {got}", status=415)


def authorize(
    headers: Mapping[str, str], verifier: TokenVerifier | None, admin_token: str | None
) -> Publisher:
    """The caller's publisher credential (`wsop.publisher`): 401 without one or with a
    bad one, 403 for a client token, 400 for a header given twice."""
    try:
        return publisher_from_headers(headers, verifier, admin_token)
    except AuthError as exc:
        raise ApiError.from_auth(exc) from None


def check_tenant(publisher: Publisher, tenant: str) -> None:
    """403 unless `publisher` may act in `tenant` (a token acts in its own only)."""
    try:
        publisher.check_tenant(tenant)
    except AuthError as exc:
        raise ApiError.from_auth(exc) from None


async def read_body(connection: BodyReading, limit: int) -> bytes:
    """The request's body (`wsop.httpbody`), or the JSON error why not: 413
    `too_large` over `limit`, 411 chunked, 400 a bad Content-Length or a body cut short."""
    try:
        return await connection.read_body(limit)
    except BodyError as exc:
        code = TOO_LARGE if exc.status == 413 else BAD_REQUEST
        raise ApiError(code, exc.message, status=exc.status) from None


# -- POST /publish ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishBody:
    """A publish request's body, decoded: its tenant, and the message fields (read with
    the tenant's id mode by `message`, once the sidecar knows it)."""

    tenant: str
    fields: dict[str, Any]
    id: str | None

    def message(self, ids: IdMode | None = None) -> ClientMessage:
        try:
            return protocol.message_from_object(self.fields, ids)
        except ProtocolError as exc:
            raise ApiError.from_protocol(exc) from None


def parse_publish(body: bytes, max_bytes: int) -> PublishBody:
    """The body of `POST /publish`: a client frame's object plus `tenant`, within the
    frame size limit. The message itself is checked (`PublishBody.message`) as a client
    frame is: same rules, same codes."""
    if not body:
        raise ApiError(BAD_REQUEST, "empty body: send the message as a JSON object")
    try:
        fields = protocol.decode_object(body, max_bytes, "body")
    except ProtocolError as exc:
        raise ApiError.from_protocol(exc) from None
    raw_id = fields.get("id")
    msg_id = raw_id if type(raw_id) is str and len(raw_id) <= protocol.MAX_ID_CHARS else None
    tenant = fields.get("tenant")
    if not protocol.is_valid_tenant(tenant):
        why = "missing 'tenant'" if tenant is None else "'tenant' must match [A-Za-z0-9_.-]{1,64}"
        raise ApiError(BAD_REQUEST, why, msg_id)
    PublishBody(tenant, fields, msg_id).message()  # every field checked before any I/O
    return PublishBody(tenant, fields, msg_id)


def ack_payload(msg_id: str | None, delivered: int, undelivered: int) -> dict[str, Any]:
    """The answer to a publish: the WebSocket ack, with `undelivered` always present."""
    return {"type": "ack", "id": msg_id, "delivered": delivered, "undelivered": undelivered}


# -- GET /presence ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    tenant: str
    users: tuple[Any, ...]
    """As asked (strings from a query, JSON values from a body), duplicates removed;
    read with the tenant's id mode by the sidecar."""


def query_params(target: str) -> dict[str, list[str]]:
    return parse_qs(split_target(target)[1], keep_blank_values=True)


def _tenant_param(params: Mapping[str, Sequence[str]]) -> str:
    values = params.get("tenant") or []
    if len(values) != 1 or not protocol.is_valid_tenant(values[0]):
        raise ApiError(BAD_REQUEST, "give one ?tenant= matching [A-Za-z0-9_.-]{1,64}")
    return values[0]


def presence_tenant(target: str) -> str:
    """The tenant of `GET /presence/count?tenant=T` (and of a presence GET)."""
    return _tenant_param(query_params(target))


def parse_presence(target: str, body: bytes | None = None) -> PresenceQuery:
    """`GET /presence?tenant=T&user=U&user=V…`, or `POST /presence` with the JSON body
    `{"tenant":T,"users":[U,V,…]}`: 1 to `MAX_PRESENCE_USERS` users."""
    if body is None:
        params = query_params(target)
        tenant, users = _tenant_param(params), params.get("user") or []
    else:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise ApiError(BAD_REQUEST, "body is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("users"), list):
            raise ApiError(BAD_REQUEST, 'expected {"tenant": T, "users": [U, …]}')
        tenant, users = _tenant_param({"tenant": [doc.get("tenant")]}), doc["users"]
    if not users:
        raise ApiError(BAD_REQUEST, "name at least one user (?user=U, repeatable)")
    if len(users) > MAX_PRESENCE_USERS:
        raise ApiError(
            BAD_REQUEST, f"{len(users)} users; ask about at most {MAX_PRESENCE_USERS} a request"
        )
    if any(type(u) not in (str, int) for u in users):
        raise ApiError(BAD_REQUEST, "user ids are strings or non-negative integers")
    return PresenceQuery(tenant, tuple(dict.fromkeys(users)))
