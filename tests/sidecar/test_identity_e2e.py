"""Exact identities through real sidecars (issue 11): "007", "7" and "42" are three users
of a string-id tenant whichever way they connect, and int tenants take only canonical
integers. Before the fix a token for "007" was user 7, a message to "007" reached the
holder of "7", and the seeded member "42" never got team messages."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.stack_helpers import Sidecars, client, drain, recv_json
from wsop.acl import bitmap, seed
from wsop.acl.csvload import ParsedTenant
from wsop.acl.dataset import TenantData
from wsop.acl.store import TenantStore
from wsop.auth import mint_token

SECRET = "e" * 32


@pytest.fixture
def sidecars(redis_url: str, tmp_path: Path) -> Iterator[Sidecars]:
    stack = Sidecars(redis_url, tmp_path / "members.json", {"WSOP_SECRET": SECRET})
    stack.write_members()
    for name in ("s0", "s1", "s2"):
        stack.start(name, tmp_path)
    stack.write_members()
    time.sleep(0.8)  # every sidecar polls the members file
    yield stack
    stack.stop_all()


def seed_string_tenant(r: redis.Redis, tenant: str, team: str, users: list[str]) -> None:
    store = TenantStore(r)
    parsed = ParsedTenant()
    parsed.teams[team].extend(users)
    data = seed.from_parsed(store, tenant, parsed, string_ids=True, max_users=1 << 24)
    seed.seed(store, [data], False)


def seed_int_tenant(r: redis.Redis, tenant: str, team: str, users: set[int]) -> None:
    data = TenantData(tenant, {team: bitmap.encode(sorted(users))}, b"", len(users), 0)
    seed.seed(TenantStore(r), [data], False)


def with_token(url: str, token: str) -> ClientConnection:
    return connect(f"{url}/ws?token={token}", open_timeout=5, legacy=True)


_early: dict[int, list[dict]] = {}  # messages that arrived while waiting for an ack


def messages(ws: ClientConnection) -> list[dict]:
    got = _early.pop(id(ws), []) + drain(ws, 0.4)
    assert all(f["type"] == "message" for f in got), got
    return got


def send(ws: ClientConnection, frame: dict) -> dict:
    """Send a frame and return its answer (the ack or the error); a team message's copy
    to the sender itself is kept for `messages`."""
    ws.send(json.dumps(frame))
    while (answer := recv_json(ws))["type"] == "message":
        _early.setdefault(id(ws), []).append(answer)
    return answer


def test_string_tenant_ids_are_exact_on_every_path(sidecars: Sidecars, r: redis.Redis) -> None:
    seed_string_tenant(r, "S", "eng", ["007", "7", "42"])
    urls = [p.url for p in sidecars.procs.values()]
    int_sub = {"tenant": "S", "sub": 42, "exp": int(time.time()) + 600}  # another issuer
    c007 = with_token(urls[0], mint_token(SECRET, "S", "007", ttl_s=600))
    c7 = client(urls[1], "S", 7)  # ?user=7 (the stack runs --insecure too)
    c42 = with_token(urls[2], jwt.encode(int_sub, SECRET, algorithm="HS256"))
    everyone = {"007": c007, "7": c7, "42": c42}
    time.sleep(0.3)

    # the seeded member "42" gets team messages, and nobody is counted twice
    ack = send(c42, {"type": "team", "teams": ["eng"], "data": "all", "id": "t1"})
    assert ack == {"type": "ack", "id": "t1", "delivered": 3}
    for name, ws in everyone.items():
        got = messages(ws)
        assert [(m["from"], m["data"]) for m in got] == [("42", "all")], name

    # a direct message to "007" reaches "007" only, one to 7 (JSON int) reaches "7" only
    for to, who in (("007", "007"), (7, "7"), ("7", "7")):
        ack = send(c42, {"type": "direct", "to": to, "data": f"to {to!r}", "id": "d"})
        assert ack == {"type": "ack", "id": "d", "delivered": 1}, to
        for name, ws in everyone.items():
            got = [m["data"] for m in messages(ws)]
            assert got == ([f"to {to!r}"] if name == who else []), (to, name)

    # and "007" is named "007" when it writes
    assert send(c007, {"type": "direct", "to": "42", "data": "hi", "id": "x"})["delivered"] == 1
    assert [m["from"] for m in messages(c42)] == ["007"]
    for ws in everyone.values():
        ws.close()


def test_int_tenant_takes_only_canonical_integers(sidecars: Sidecars, r: redis.Redis) -> None:
    seed_int_tenant(r, "N", "eng", {1, 7})
    urls = [p.url for p in sidecars.procs.values()]
    with pytest.raises(InvalidStatus) as refused:
        client(urls[0], "N", "007")
    assert refused.value.response.status_code == 403
    assert b"leading zeros" in refused.value.response.body
    with pytest.raises(InvalidStatus) as refused:
        client(urls[0], "N", "%2B7")  # "+7": a typo'd number in any tenant
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        with_token(urls[0], mint_token(SECRET, "N", "007", ttl_s=600))
    assert refused.value.response.status_code == 403

    n1 = with_token(urls[0], mint_token(SECRET, "N", "1", ttl_s=600))  # sub "1" is user 1
    n7 = client(urls[1], "N", 7)
    time.sleep(0.3)
    error = send(n1, {"type": "direct", "to": "007", "data": 1, "id": "bad"})
    assert error["type"] == "error" and error["code"] == "bad_request"
    assert "leading zeros" in error["message"]
    assert send(n1, {"type": "direct", "to": "7", "data": 2, "id": "ok"})["delivered"] == 1
    assert [(m["from"], m["data"]) for m in messages(n7)] == [(1, 2)]
    ack = send(n7, {"type": "team", "teams": ["eng"], "data": 3, "id": "t"})
    assert ack == {"type": "ack", "id": "t", "delivered": 2}
    n1.close()
    n7.close()
