"""`POST /publish` and `GET /presence` on real sidecar and LB processes on loopback: a
backend's message reaches the connected users it names, of its own tenant only (the
same ids in another tenant get nothing), with an ack that counts online and offline
recipients right; every bad request gets the right JSON error from the LB and from a
sidecar alike, and no traceback in any log."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.stack_helpers import (
    ADMIN_TOKEN,
    client,
    drain,
    drain_all,
    recv_json,
    seed_tenant,
    sidecars_behind_lb,
)
from wsop.acl.store import TenantStore
from wsop.auth import mint_token
from wsop.publisher import mint_publish_token
from wsop.sidecar.delivery import MEMBERSHIP_GRACE_S

SECRET = "publish-e2e-secret-" + "x" * 20
ENV = {"WSOP_SECRET": SECRET}


class Stack:
    def __init__(self, sidecars: Any, lb_port: int, redis_url: str, logs: Path) -> None:
        self.sidecars, self.lb_port, self.redis_url, self.logs = sidecars, lb_port, redis_url, logs
        self.r = redis.Redis.from_url(redis_url)

    @property
    def ports(self) -> dict[str, int]:
        """Where to publish: the LB and each sidecar."""
        return {"lb": self.lb_port, **{n: p.port for n, p in self.sidecars.procs.items()}}

    @property
    def lb_url(self) -> str:
        return f"ws://127.0.0.1:{self.lb_port}"


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("publish")
    with sidecars_behind_lb(redis_server, tmp, ENV) as (sidecars, port):
        time.sleep(MEMBERSHIP_GRACE_S)  # past it, an unheld recipient is reported at once
        yield Stack(sidecars, port, redis_server, tmp)


def call(
    port: int,
    method: str,
    path: str,
    payload: Any = None,
    token: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    """One HTTP request, headers as given (duplicates too); (status, JSON, response)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    data = raw if raw is not None else None if payload is None else json.dumps(payload).encode()
    conn.putrequest(method, path, skip_accept_encoding=True)
    all_headers = list(headers or [])
    if token is not None:
        all_headers.append(("Authorization", f"Bearer {token}"))
    if data is not None and not any(k.lower() == "content-type" for k, _ in all_headers):
        all_headers.append(("Content-Type", "application/json"))
    if data is not None and not any(k.lower() == "transfer-encoding" for k, _ in all_headers):
        all_headers.append(("Content-Length", str(len(data))))
    for name, value in all_headers:
        conn.putheader(name, value)
    conn.endheaders(data)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.getheader("Content-Type") == "application/json", body
    return response.status, json.loads(body), response


def publish_token(tenant: str, sender: str | None = "bot") -> str:
    return mint_publish_token(SECRET, tenant, sender)


def quiet(*conns: ClientConnection) -> None:
    assert drain_all(conns, 0.3) == [[] for _ in conns]


def test_a_publish_reaches_the_named_users_of_its_tenant_only(stack: Stack) -> None:
    seed_tenant(stack.r, "pa", {"red": {1, 2, 3}, "blue": {4}})
    seed_tenant(stack.r, "pb", {"red": {1, 2, 3}, "blue": {4}})
    # user 3 of pa is online by its bit alone: resolved, but no connection anywhere
    TenantStore(stack.r).set_online("pa", [3], True)
    a1, a2 = client(stack.lb_url, "pa", 1), client(stack.lb_url, "pa", 2)
    b1, b2 = client(stack.lb_url, "pb", 1), client(stack.lb_url, "pb", 2)
    b4 = client(stack.lb_url, "pb", 4)
    token = publish_token("pa")
    try:
        for where, port in stack.ports.items():
            msg = {"tenant": "pa", "type": "direct", "to": 1, "data": {"n": where}, "id": where}
            status, ack, _ = call(port, "POST", "/publish", msg, token)
            assert (status, ack) == (
                200,
                {"type": "ack", "id": where, "delivered": 1, "undelivered": 0},
            )
            got = recv_json(a1)
            assert (got["type"], got["from"], got["data"], got["id"]) == (
                "message", "bot", {"n": where}, where,
            )  # fmt: skip
            assert "teams" not in got

            team = {"tenant": "pa", "type": "team", "teams": ["red"], "data": where, "id": "t"}
            status, ack, _ = call(port, "POST", "/publish", team, token)
            assert (status, ack["delivered"], ack["undelivered"]) == (200, 2, 1), (where, ack)
            for ws in (a1, a2):
                got = recv_json(ws)
                assert (got["from"], got["data"], got["teams"]) == ("bot", where, ["red"])

            # a team of which nobody is online (4 is online only in pb): nothing, no error
            blue = {"tenant": "pa", "type": "team", "teams": ["blue", "ghost"], "data": 1}
            status, ack, _ = call(port, "POST", "/publish", blue, token)
            assert (status, ack["delivered"], ack["undelivered"]) == (200, 0, 0)

            offline = {"tenant": "pa", "type": "direct", "to": 9, "data": 1, "id": "o"}
            status, ack, _ = call(port, "POST", "/publish", offline, token)
            assert (status, ack) == (
                200,
                {"type": "ack", "id": "o", "delivered": 0, "undelivered": 1},
            )
        quiet(a1, a2, b1, b2, b4)  # exactly one copy each, and nothing in tenant pb
    finally:
        for ws in (a1, a2, b1, b2, b4):
            ws.close()


def test_the_sender_is_the_tokens_sub_or_null(stack: Stack) -> None:
    ws = client(stack.lb_url, "pc", "5")
    try:
        for token, expected in (
            (publish_token("pc", None), None),
            (ADMIN_TOKEN, None),  # the admin token: any tenant, sender null
            (publish_token("pc", "billing"), "billing"),
        ):
            msg = {"tenant": "pc", "type": "direct", "to": "5", "data": "x"}
            status, ack, _ = call(stack.lb_port, "POST", "/publish", msg, token)
            assert (status, ack["delivered"]) == (200, 1)
            assert recv_json(ws)["from"] == expected
    finally:
        ws.close()


def test_a_publish_token_never_opens_a_session(stack: Stack) -> None:
    token = publish_token("pd", "7")
    for port in stack.ports.values():
        with pytest.raises(InvalidStatus) as info:
            connect(
                f"ws://127.0.0.1:{port}/ws",
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=5,
            )
        assert info.value.response.status_code == 403
        assert b"publish token" in info.value.response.body
    # a client token of the same tenant connects (and cannot publish: below)
    client_token = mint_token(SECRET, "pd", 7)
    with connect(
        f"{stack.lb_url}/ws", additional_headers={"Authorization": f"Bearer {client_token}"}
    ) as ws:
        msg = {"tenant": "pd", "type": "direct", "to": 7, "data": "x"}
        status, answer, _ = call(stack.lb_port, "POST", "/publish", msg, client_token)
        assert (status, answer["code"]) == (403, "forbidden")
        assert drain(ws, 0.3) == []


DIRECT = {"tenant": "pe", "type": "direct", "to": 1, "data": "x", "id": "e1"}
BAD_REQUESTS = [
    # (what, method, path, payload or raw bytes, headers, token, status, code)
    ("no credential", "POST", "/publish", DIRECT, [], None, 401, "unauthorized"),
    ("forged", "POST", "/publish", DIRECT, [], "eyJ.bad.token", 401, "unauthorized"),
    ("client", "POST", "/publish", DIRECT, [], "client", 403, "forbidden"),
    ("admin wrong", "POST", "/publish", DIRECT, [("X-Wsop-Admin-Token", "no")], None, 401,
     "unauthorized"),
    ("other tenant", "POST", "/publish", {**DIRECT, "tenant": "zz"}, [], "pub", 403, "forbidden"),
    ("auth twice", "POST", "/publish", DIRECT, [("Authorization", "Bearer x")], "pub", 400,
     "bad_request"),
    ("basic auth", "POST", "/publish", DIRECT, [("Authorization", "Basic eA==")], None, 400,
     "bad_request"),
    ("GET", "GET", "/publish", None, [], "pub", 405, "bad_request"),
    ("PUT", "PUT", "/publish", DIRECT, [], "pub", 405, "bad_request"),
    ("text/plain", "POST", "/publish", DIRECT, [("Content-Type", "text/plain")], "pub", 415,
     "bad_request"),
    ("no body", "POST", "/publish", b"", [], "pub", 400, "bad_request"),
    ("bad JSON", "POST", "/publish", b'{"tenant": "pe",', [], "pub", 400, "bad_request"),
    ("not UTF-8", "POST", "/publish", b"\xff\xfe\xfd", [], "pub", 400, "bad_request"),
    ("array", "POST", "/publish", b"[1]", [], "pub", 400, "bad_request"),
    ("too large", "POST", "/publish", {**DIRECT, "data": "x" * 70_000}, [], "pub", 413,
     "too_large"),
    ("chunked", "POST", "/publish", b"5\r\nhello\r\n0\r\n\r\n", [("Transfer-Encoding", "chunked")],
     "pub", 411, "bad_request"),
    ("no type", "POST", "/publish", {"tenant": "pe", "data": 1}, [], "pub", 400, "bad_request"),
    ("no data", "POST", "/publish", {"tenant": "pe", "type": "direct", "to": 1}, [], "pub", 400,
     "bad_request"),
    ("007 in an int tenant", "POST", "/publish", {**DIRECT, "to": "007"}, [], "pub", 400,
     "bad_request"),
    ("unseeded team", "POST", "/publish", {"tenant": "pe", "type": "team", "teams": ["a"],
     "data": 1}, [], "pub", 404, "not_found"),
    ("presence: no credential", "GET", "/presence?tenant=pe&user=1", None, [], None, 401,
     "unauthorized"),
    ("presence: client", "GET", "/presence?tenant=pe&user=1", None, [], "client", 403,
     "forbidden"),
    ("presence: other tenant", "GET", "/presence?tenant=zz&user=1", None, [], "pub", 403,
     "forbidden"),
    ("presence: no user", "GET", "/presence?tenant=pe", None, [], "pub", 400, "bad_request"),
    ("presence: bad id", "GET", "/presence?tenant=pe&user=007", None, [], "pub", 400,
     "bad_request"),
    ("presence: too many", "POST", "/presence", {"tenant": "pe", "users": list(range(1001))}, [],
     "pub", 400, "bad_request"),
    ("presence: DELETE", "DELETE", "/presence?tenant=pe&user=1", None, [], "pub", 405,
     "bad_request"),
    ("count: POST", "POST", "/presence/count?tenant=pe", {}, [], "pub", 405, "bad_request"),
    ("count: no tenant", "GET", "/presence/count", None, [], "pub", 400, "bad_request"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda c: c[0])
def test_bad_requests_get_json_errors_from_the_lb_and_the_sidecars(
    stack: Stack, case: tuple
) -> None:
    what, method, path, payload, headers, token, status, code = case
    tokens = {"pub": publish_token("pe"), "client": mint_token(SECRET, "pe", 1)}
    token = tokens.get(token, token)
    raw = payload if isinstance(payload, bytes) else None
    for where, port in stack.ports.items():
        got, answer, response = call(
            port, method, path, None if raw is not None else payload, token, headers, raw
        )
        assert (got, answer["type"], answer["code"]) == (status, "error", code), (where, answer)
        assert answer["message"] and set(answer) == {"type", "id", "code", "message"}
        if status == 405:
            allowed = response.getheader("Allow")
            assert allowed and method not in allowed.split(", "), (where, allowed)
    logs = "".join(p.read_text(errors="replace") for p in stack.logs.glob("*.log"))
    assert "Traceback" not in logs


def post_then_half_close(port: int, token: str, body: bytes, declared: int) -> bytes:
    """A POST whose client shuts its sending side after `body` (of `declared` bytes)."""
    head = (
        f"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(4096):
            out += chunk
        return out


def test_a_body_cut_short_by_a_half_close_is_answered_400(stack: Stack) -> None:
    """The client said it was done sending before its Content-Length: it still reads an
    answer on its open receiving side (not a silent close), and a whole body followed by
    a half-close is served as usual."""
    token = publish_token("pe")
    whole = json.dumps({"tenant": "pe", "type": "direct", "to": 1, "data": 1, "id": "h"})
    for where, port in stack.ports.items():
        out = post_then_half_close(port, token, whole.encode()[:10], len(whole))
        assert out.startswith(b"HTTP/1.1 400 "), (where, out[:200])
        answer = json.loads(out.partition(b"\r\n\r\n")[2])
        assert answer["code"] == "bad_request", (where, answer)
        assert f"after 10 of {len(whole)} bytes" in answer["message"], (where, answer)
        out = post_then_half_close(port, token, whole.encode(), len(whole))
        assert out.startswith(b"HTTP/1.1 200 "), (where, out[:200])
        assert json.loads(out.partition(b"\r\n\r\n")[2])["type"] == "ack", where
    logs = "".join(p.read_text(errors="replace") for p in stack.logs.glob("*.log"))
    assert "Traceback" not in logs


def test_presence_and_count(stack: Stack) -> None:
    seed_tenant(stack.r, "pf", {"red": {1, 2}})
    tabs = [client(stack.lb_url, "pf", 1), client(stack.lb_url, "pf", 1)]
    other = [client(stack.lb_url, "pf", 2), client(stack.lb_url, "pg", 1)]
    token = publish_token("pf")
    try:
        time.sleep(0.3)  # presence is written as each connection registers
        for port in stack.ports.values():
            for auth in (token, ADMIN_TOKEN):
                status, answer, _ = call(
                    port, "GET", "/presence?tenant=pf&user=1&user=2&user=3&user=1", token=auth
                )
                assert status == 200
                assert answer == {
                    "tenant": "pf",
                    "users": [
                        {"user": 1, "online": True, "connections": 2},
                        {"user": 2, "online": True, "connections": 1},
                        {"user": 3, "online": False, "connections": 0},
                    ],
                    "online": 2,
                }
                status, posted, _ = call(
                    port, "POST", "/presence", {"tenant": "pf", "users": [1, "2", 3]}, auth
                )
                assert (status, posted) == (200, answer)
                status, count, _ = call(port, "GET", "/presence/count?tenant=pf", token=auth)
                assert (status, count) == (200, {"tenant": "pf", "count": 2})
        tabs[0].close()
        time.sleep(0.5)
        _, answer, _ = call(stack.lb_port, "GET", "/presence?tenant=pf&user=1", token=token)
        assert answer["users"] == [{"user": 1, "online": True, "connections": 1}]
    finally:
        for ws in tabs + other:
            ws.close()


def test_presence_and_publish_in_a_string_id_tenant(stack: Stack) -> None:
    from wsop.acl import seed
    from wsop.acl.csvload import ParsedTenant

    store = TenantStore(stack.r)
    parsed = ParsedTenant()
    parsed.teams["red"].extend(["007", "u-9"])
    seed.seed(
        store, [seed.from_parsed(store, "ph", parsed, string_ids=True, max_users=1 << 24)], False
    )
    ws = client(stack.lb_url, "ph", "007")
    try:
        time.sleep(0.3)
        token = publish_token("ph")
        status, answer, _ = call(
            stack.lb_port, "GET", "/presence?tenant=ph&user=007&user=7&user=u-9", token=token
        )
        assert status == 200, answer
        assert [(u["user"], u["online"]) for u in answer["users"]] == [
            ("007", True), ("7", False), ("u-9", False),
        ]  # fmt: skip
        msg = {"tenant": "ph", "type": "team", "teams": ["red"], "data": 1}
        assert call(stack.lb_port, "POST", "/publish", msg, token)[1]["delivered"] == 1
        assert recv_json(ws)["data"] == 1
        # asking about a name never seen does not give it an index
        assert stack.r.hget("users:{ph}:to-index", "7") is None
    finally:
        ws.close()


def test_limits_rate_and_recipients(redis_server: str, tmp_path: Path) -> None:
    """A sidecar's publish rate per publisher and its recipient limit, as JSON errors."""
    extra = ["--max-publishes-per-second", "1", "--max-recipients", "1"]
    with sidecars_behind_lb(redis_server, tmp_path, ENV, ("s0",), extra) as (sidecars, _):
        port = sidecars.procs["s0"].port
        r = redis.Redis.from_url(redis_server)
        seed_tenant(r, "pl", {"red": {1, 2}}, online=[1, 2])
        token = publish_token("pl")
        team = {"tenant": "pl", "type": "team", "teams": ["red"], "data": 1, "id": "big"}
        status, answer, _ = call(port, "POST", "/publish", team, token)
        assert (status, answer["code"], answer["id"]) == (422, "too_many_recipients", "big")
        # (a team nobody is in: answered at once, so the bucket cannot refill meanwhile)
        quick = {"tenant": "pl", "type": "team", "teams": ["ghost"], "data": 1, "id": "r"}
        codes = [call(port, "POST", "/publish", quick, token)[0] for _ in range(4)]
        assert codes.count(429) >= 1 and codes[0] == 200, codes  # a burst of 2, then 1/s
        status, answer, _ = call(port, "POST", "/publish", quick, token)
        assert (status, answer["code"], answer["id"]) == (429, "rate_limited", "r")
        # another publisher of the tenant has its own bucket
        other = publish_token("pl", "other")
        assert call(port, "POST", "/publish", quick, other)[0] == 200
        r.close()
