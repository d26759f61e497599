"""The API requests as both servers read them (`wsop.httpapi`), without sockets: every
bad request is one `ApiError` with the WebSocket protocol's code and a sensible HTTP
status, never an exception of another kind."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsop import httpapi, protocol
from wsop.httpapi import ApiError, check_json_body, check_method, parse_presence, parse_publish
from wsop.names import IdMode
from wsop.protocol import DirectMessage, TeamMessage

MAX = 1024


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def refused(call, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    return info.value


def test_a_direct_and_a_team_publish() -> None:
    direct = parse_publish(body(tenant="acme", type="direct", to=7, data={"a": 1}, id="p1"), MAX)
    assert (direct.tenant, direct.id) == ("acme", "p1")
    assert direct.message(IdMode.INT) == DirectMessage(7, {"a": 1}, "p1")
    assert direct.message(IdMode.STRING) == DirectMessage("7", {"a": 1}, "p1")
    team = parse_publish(body(tenant="acme", type="team", teams=["a", "b"], data=None), MAX)
    assert team.message() == TeamMessage(("a", "b"), None, None)


@pytest.mark.parametrize(
    ("raw", "code", "status", "needle"),
    [
        (b"", "bad_request", 400, "empty body"),
        (b'{"tenant":', "bad_request", 400, "body is not valid JSON"),
        (b"[1, 2]", "bad_request", 400, "body must be a JSON object"),
        (b"\xff\xfe", "bad_request", 400, "not UTF-8"),
        (b'{"type":"direct","to":1,"data":1}', "bad_request", 400, "missing 'tenant'"),
        (body(tenant="a{b}", type="direct", to=1, data=1), "bad_request", 400, "'tenant' must"),
        (body(tenant="acme", type="shout", data=1), "bad_request", 400, "unknown 'type'"),
        (body(tenant="acme", type="direct", to=-1, data=1), "bad_request", 400, "'to'"),
        (body(tenant="acme", type="direct", to=1), "bad_request", 400, "missing 'data'"),
        (body(tenant="acme", type="team", teams=[], data=1), "bad_request", 400, "'teams'"),
        (body(tenant="acme", type="team", teams=["a", "a"], data=1), "bad_request", 400, "dup"),
        (body(tenant="acme", type="direct", to=1, data="x" * MAX), "too_large", 413, "exceeds"),
        (b'{"tenant":"acme","type":"direct","to":1,"data":NaN}', "bad_request", 400, "JSON"),
        (b"[" * 200 + b"]" * 200, "bad_request", 400, ""),
    ],
)
def test_bad_bodies(raw: bytes, code: str, status: int, needle: str) -> None:
    err = refused(parse_publish, raw, MAX)
    assert (err.code, err.status) == (code, status)
    assert needle in err.message
    assert err.payload() == {"type": "error", "id": None, "code": code, "message": err.message}


def test_the_error_answers_the_request_id() -> None:
    err = refused(parse_publish, body(tenant="acme", type="direct", data=1, id="x9"), MAX)
    assert err.payload()["id"] == "x9"


def test_in_an_int_tenant_007_is_not_user_7() -> None:
    parsed = parse_publish(body(tenant="acme", type="direct", to="007", data=1), MAX)
    assert parsed.message(IdMode.STRING).to == "007"
    assert refused(parsed.message, IdMode.INT).code == "bad_request"


@given(st.binary(max_size=200))
def test_any_bytes_are_a_publish_or_an_api_error(raw: bytes) -> None:
    try:
        parse_publish(raw, MAX)
    except ApiError as err:
        assert err.code in protocol.ERROR_CODES and err.status in (400, 413)


def test_methods_and_content_types() -> None:
    err = refused(check_method, "/publish", "GET")
    assert (err.status, err.headers) == (405, {"Allow": "POST"})
    err = refused(check_method, "/presence", "DELETE")
    assert err.headers == {"Allow": "GET, POST"}
    check_method("/presence/count", "GET")
    check_json_body({"Content-Type": "application/json; charset=utf-8"})
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/jsonx"}):
        assert refused(check_json_body, headers).status == 415


def test_every_error_code_has_a_status() -> None:
    assert set(httpapi.HTTP_STATUS) == set(protocol.ERROR_CODES)
    assert httpapi.HTTP_STATUS["rate_limited"] == 429
    assert httpapi.HTTP_STATUS["unauthorized"] == 401
    assert httpapi.HTTP_STATUS["unavailable"] == 503


def test_presence_queries() -> None:
    query = parse_presence("/presence?tenant=acme&user=1&user=u-2&user=1")
    assert (query.tenant, query.users) == ("acme", ("1", "u-2"))
    posted = parse_presence("/presence", body(tenant="acme", users=[1, "x", 1]))
    assert posted.users == (1, "x")
    assert httpapi.presence_tenant("/presence/count?tenant=acme") == "acme"


@pytest.mark.parametrize(
    ("target", "raw", "needle"),
    [
        ("/presence?user=1", None, "?tenant="),
        ("/presence?tenant=a&tenant=b&user=1", None, "?tenant="),
        ("/presence?tenant=acme", None, "at least one user"),
        ("/presence?tenant=acme&" + "&".join(f"user={i}" for i in range(1001)), None, "1000"),
        ("/presence", b"{", "not valid JSON"),
        ("/presence", body(tenant="acme"), "expected"),
        ("/presence", body(tenant="acme", users=[True]), "user ids"),
        ("/presence", body(tenant="acme", users=[{"a": 1}]), "user ids"),
        ("/presence", body(tenant=5, users=[1]), "?tenant="),
    ],
)
def test_bad_presence_queries(target: str, raw: bytes | None, needle: str) -> None:
    err = refused(parse_presence, target, raw)
    assert err.code == "bad_request" and err.status == 400 and needle in err.message
