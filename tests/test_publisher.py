"""Publisher credentials (`wsop.publisher`), without sockets: a publish token publishes
and never opens a session, a client token never publishes, the admin token publishes
for any tenant, and nothing crosses tenants. The same over real sockets:
tests/sidecar/test_publish_e2e.py."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from wsop.auth import (
    AuthError,
    BadRequest,
    ScopeError,
    TokenVerifier,
    identity_from_request,
    mint_token,
)
from wsop.cli.main import app
from wsop.errors import UsageError
from wsop.jwtkeys import SigningKey
from wsop.publisher import (
    Publisher,
    mint_publish_token,
    publisher_from_headers,
    verify_publisher,
)

SECRET = "p" * 32
ADMIN = "admin-token-for-tests"
NOW = 1_700_000_000


@pytest.fixture
def verifier() -> TokenVerifier:
    v = TokenVerifier.from_settings(SECRET)
    assert v is not None
    return v


def test_a_publish_token_names_its_tenant_and_sender(verifier: TokenVerifier) -> None:
    token = mint_publish_token(SECRET, "acme", "billing", ttl_s=60, now=NOW)
    assert verify_publisher(verifier, token, now=NOW + 30) == Publisher("acme", "billing")
    anonymous = mint_publish_token(SECRET, "acme", ttl_s=60, now=NOW)
    assert verify_publisher(verifier, anonymous, now=NOW) == Publisher("acme", None)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["scope"] == "publish" and claims["sub"] == "billing"
    assert "sub" not in jwt.decode(anonymous, options={"verify_signature": False})


def test_publish_tokens_obey_the_time_rules(verifier: TokenVerifier) -> None:
    token = mint_publish_token(SECRET, "acme", ttl_s=60, now=NOW)
    with pytest.raises(AuthError, match="expired"):
        verify_publisher(verifier, token, now=NOW + 60 + 31)
    long = mint_publish_token(SECRET, "acme", ttl_s=3 * 24 * 3600, now=NOW)
    with pytest.raises(AuthError, match="lifetime"):
        verify_publisher(verifier, long, now=NOW)


@pytest.mark.parametrize(
    "scope", ["publish", "read publish", ["publish"], ["x", "publish"]], ids=repr
)
def test_scope_as_a_string_or_a_list(verifier: TokenVerifier, scope: object) -> None:
    claims = {"tenant": "acme", "scope": scope, "exp": int(time.time()) + 60}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert verify_publisher(verifier, token).tenant == "acme"


@pytest.mark.parametrize("scope", [None, "read", "publisher", ["read"]], ids=repr)
def test_a_token_without_the_scope_is_forbidden(verifier: TokenVerifier, scope: object) -> None:
    claims = {"tenant": "acme", "sub": "7", "exp": int(time.time()) + 60}
    if scope is not None:
        claims["scope"] = scope
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(ScopeError) as info:
        verify_publisher(verifier, token)
    assert info.value.http_status == 403


@pytest.mark.parametrize("scope", [5, {"publish": True}, ["publish", 3]], ids=repr)
def test_a_malformed_scope_is_refused(verifier: TokenVerifier, scope: object) -> None:
    claims = {"tenant": "acme", "scope": scope, "exp": int(time.time()) + 60}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="scope") as info:
        verify_publisher(verifier, token)
    assert info.value.http_status == 401


def test_a_publish_token_never_opens_a_session(verifier: TokenVerifier) -> None:
    token = mint_publish_token(SECRET, "acme", "7")  # even with a sub that is a user id
    headers = {"Authorization": f"Bearer {token}"}
    with pytest.raises(ScopeError, match="cannot open a WebSocket session") as info:
        identity_from_request("/ws", headers, verifier)
    assert info.value.http_status == 403
    with pytest.raises(ScopeError):  # nor by ?token=, nor on an --insecure stack
        identity_from_request(f"/ws?token={token}&tenant=acme&user=7", {}, verifier, True)


def test_a_publish_token_is_checked_with_public_keys_too(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization

    private = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "ec.pub"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    verifier = TokenVerifier.from_settings(public_key_file=public)
    assert verifier is not None
    token = mint_publish_token(SigningKey("ES256", private), "acme", "bot")
    assert verify_publisher(verifier, token) == Publisher("acme", "bot")
    with pytest.raises(AuthError, match="HS256"):
        verify_publisher(verifier, mint_publish_token(SECRET, "acme"))


def test_credentials_from_headers(verifier: TokenVerifier) -> None:
    token = mint_publish_token(SECRET, "acme", "bot")
    bearer = {"Authorization": f"Bearer {token}"}
    assert publisher_from_headers(bearer, verifier, ADMIN) == Publisher("acme", "bot")
    admin = Publisher(None)
    assert publisher_from_headers({"Authorization": f"Bearer {ADMIN}"}, verifier, ADMIN) == admin
    assert publisher_from_headers({"X-Wsop-Admin-Token": ADMIN}, None, ADMIN) == admin
    with pytest.raises(AuthError, match="missing credentials"):
        publisher_from_headers({}, verifier, ADMIN)
    with pytest.raises(AuthError, match="wrong admin token"):
        publisher_from_headers({"X-Wsop-Admin-Token": "nope"}, verifier, ADMIN)
    with pytest.raises(AuthError, match="no JWT secret"):  # a server without keys
        publisher_from_headers(bearer, None, ADMIN)
    with pytest.raises(BadRequest):
        publisher_from_headers({"Authorization": f"Basic {token}"}, verifier, ADMIN)
    client = {"Authorization": f"Bearer {mint_token(SECRET, 'acme', 7)}"}
    with pytest.raises(ScopeError):
        publisher_from_headers(client, verifier, ADMIN)


def test_never_across_tenants() -> None:
    Publisher("acme").check_tenant("acme")
    Publisher(None).check_tenant("beta")  # the admin token: any tenant
    with pytest.raises(ScopeError, match="for tenant 'acme', not 'beta'"):
        Publisher("acme", "bot").check_tenant("beta")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"tenant": "a b"}, "bad tenant"),
        ({"sender": "bad\nname"}, "bad sender"),
        ({"ttl_s": 0}, "ttl"),
        ({"secret": ""}, "no JWT secret"),
    ],
)
def test_minting_refuses_bad_input(kwargs: dict, needle: str) -> None:
    args = {"secret": SECRET, "tenant": "acme", **kwargs}
    with pytest.raises(UsageError, match=needle):
        mint_publish_token(**args)


def test_cli_token_publish(monkeypatch: pytest.MonkeyPatch, verifier: TokenVerifier) -> None:
    monkeypatch.setenv("WSOP_SECRET", SECRET)
    runner = CliRunner()
    result = runner.invoke(app, ["token", "--publish", "--tenant", "acme", "--user", "ops"])
    assert result.exit_code == 0, result.output
    assert verify_publisher(verifier, result.stdout.strip()) == Publisher("acme", "ops")
    result = runner.invoke(app, ["token", "--publish", "--tenant", "acme"])
    assert verify_publisher(verifier, result.stdout.strip()) == Publisher("acme", None)
    result = runner.invoke(app, ["token", "--tenant", "acme"])
    assert result.exit_code == 2 and "--user is required" in result.stderr
