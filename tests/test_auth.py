"""JWT minting/checking and the handshake identity decision, plus `wsop token`."""

from __future__ import annotations

import base64
import json
import warnings

import jwt
import pytest
from typer.testing import CliRunner

from wsop.auth import (
    AuthError,
    Identity,
    TokenPolicy,
    identity_from_request,
    mint_token,
    secret_from_env,
    secret_warning,
    verify_token,
)
from wsop.cli.main import app
from wsop.errors import UsageError, WsopError

from .conftest import run_wsop

SECRET = "s" * 32
NOW = 1_700_000_000


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


# --- mint / verify ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "expected"),
    [(0, 0), (42, 42), ("42", 42), ("007", "007"), ("u-9f3a", "u-9f3a"), ("ü", "ü")],
)
def test_round_trip(user, expected):
    token = mint_token(SECRET, "acme", user, ttl_s=60, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 59) == Identity("acme", expected)


def test_claims_on_the_wire():
    token = mint_token(SECRET, "acme.eu", 7, ttl_s=60, now=NOW)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"tenant": "acme.eu", "sub": "7", "iat": NOW, "exp": NOW + 60}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_expired():
    """Expired at exp, plus the leeway forgiven for clock skew (30 s by default)."""
    token = mint_token(SECRET, "acme", 1, ttl_s=60, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 89).user == 1
    with pytest.raises(AuthError, match="expired"):
        verify_token(SECRET, token, now=NOW + 90)
    with pytest.raises(AuthError, match="expired"):
        verify_token(SECRET, token, now=NOW + 60, policy=TokenPolicy(leeway_s=0))


def test_default_now_is_the_clock():
    assert verify_token(SECRET, mint_token(SECRET, "acme", 1, ttl_s=60)).user == 1
    with pytest.raises(AuthError, match="expired"):
        verify_token(SECRET, mint_token(SECRET, "acme", 1, ttl_s=60, now=NOW))


def test_wrong_secret():
    token = mint_token(SECRET, "acme", 1, ttl_s=60, now=NOW)
    with pytest.raises(AuthError, match="signature"):
        verify_token("t" * 32, token, now=NOW)


def test_tampered_payload():
    token = mint_token(SECRET, "acme", 1, ttl_s=60, now=NOW)
    header, _, signature = token.split(".")
    forged = _b64({"tenant": "other", "sub": "1", "exp": NOW + 60})
    with pytest.raises(AuthError, match="signature"):
        verify_token(SECRET, f"{header}.{forged}.{signature}", now=NOW)


def test_alg_none_is_refused():
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'tenant': 'a', 'sub': '1'})}."
    with pytest.raises(AuthError):
        verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "a.b", "...."])
def test_garbage_token(garbage):
    with pytest.raises(AuthError):
        verify_token(SECRET, garbage, now=NOW)


@pytest.mark.parametrize("missing", ["tenant", "sub", "exp"])
def test_missing_claims(missing):
    claims = {"tenant": "acme", "sub": "1", "exp": NOW + 60}
    del claims[missing]
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=f"'{missing}'"):
        verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize(
    ("claims", "needle"),
    [
        ({"tenant": "a{b}", "sub": "1"}, "tenant"),
        ({"tenant": "", "sub": "1"}, "tenant"),
        ({"tenant": 5, "sub": "1"}, "tenant"),
        ({"tenant": "acme", "sub": -1}, "sub"),
        ({"tenant": "acme", "sub": ""}, "sub"),
        ({"tenant": "acme", "sub": ["1"]}, "sub"),
        ({"tenant": "acme", "sub": "1", "exp": "soon"}, "exp"),
        ({"tenant": "acme", "sub": "1", "nbf": NOW + 31}, "not valid yet"),
    ],
)
def test_bad_claims(claims, needle):
    token = jwt.encode({"exp": NOW + 60, **claims}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=needle):
        verify_token(SECRET, token, now=NOW)


def test_int_sub_from_other_issuers_is_accepted():
    token = jwt.encode({"tenant": "acme", "sub": 9, "exp": NOW + 60}, SECRET, algorithm="HS256")
    assert verify_token(SECRET, token, now=NOW) == Identity("acme", 9)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"tenant": "a{b}"}, "tenant"),
        ({"tenant": "x" * 65}, "tenant"),
        ({"tenant": "acme\n"}, "tenant"),
        ({"user": -3}, "user"),
        ({"user": ""}, "user"),
        ({"ttl_s": 0}, "ttl"),
        ({"ttl_s": -5}, "ttl"),
        ({"secret": ""}, "WSOP_SECRET"),
    ],
)
def test_mint_refuses_bad_input(kwargs, needle):
    args = {"secret": SECRET, "tenant": "acme", "user": 1, "ttl_s": 60, **kwargs}
    with pytest.raises(UsageError, match=needle):
        mint_token(**args)


def test_auth_error_is_a_wsop_error():
    assert issubclass(AuthError, WsopError)


def test_short_secret_works_quietly_and_is_reported_once():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token = mint_token("dev", "acme", 1, ttl_s=60, now=NOW)
        assert verify_token("dev", token, now=NOW).user == 1
    assert "3 bytes" in secret_warning("dev")
    assert secret_warning(SECRET) is None


def test_secret_from_env():
    assert secret_from_env({"WSOP_SECRET": "abc"}) == "abc"
    for env in ({}, {"WSOP_SECRET": ""}):
        with pytest.raises(UsageError, match="WSOP_SECRET"):
            secret_from_env(env)


def test_secret_from_process_env(monkeypatch):
    monkeypatch.setenv("WSOP_SECRET", "xyz")
    assert secret_from_env() == "xyz"
    monkeypatch.delenv("WSOP_SECRET")
    with pytest.raises(UsageError):
        secret_from_env()


# --- identity_from_request ----------------------------------------------------------


@pytest.fixture
def token() -> str:
    return mint_token(SECRET, "acme", 42, ttl_s=600)


def test_token_in_query(token):
    assert identity_from_request(f"/ws?token={token}", {}, SECRET, False) == Identity("acme", 42)


@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION"])
def test_token_in_header(token, name):
    got = identity_from_request("/ws", {name: f"Bearer {token}"}, SECRET, False)
    assert got == Identity("acme", 42)


def test_header_wins_over_query(token):
    other = mint_token(SECRET, "beta", 7, ttl_s=600)
    got = identity_from_request(
        f"/ws?token={other}", {"Authorization": f"bearer  {token} "}, SECRET, False
    )
    assert got == Identity("acme", 42)


@pytest.mark.parametrize("value", ["Basic abc", "Bearer", "Bearer   ", "token"])
def test_bad_authorization_header(value):
    with pytest.raises(AuthError, match="Bearer"):
        identity_from_request("/ws", {"Authorization": value}, SECRET, False)


def test_missing_token():
    with pytest.raises(AuthError, match="missing token"):
        identity_from_request("/ws", {}, SECRET, False)
    with pytest.raises(AuthError, match="empty"):
        identity_from_request("/ws?token=", {}, SECRET, False)


def test_secure_mode_ignores_tenant_and_user_params():
    with pytest.raises(AuthError, match="missing token"):
        identity_from_request("/ws?tenant=acme&user=1", {}, SECRET, False)


def test_bad_token_in_request():
    forged = mint_token("t" * 32, "acme", 1, ttl_s=600)
    with pytest.raises(AuthError, match="signature"):
        identity_from_request(f"/ws?token={forged}", {}, SECRET, False)


def test_token_without_server_secret(token):
    with pytest.raises(AuthError, match="no JWT secret"):
        identity_from_request(f"/ws?token={token}", {}, None, False)


def test_insecure_mode():
    assert identity_from_request("/ws?tenant=acme&user=7", {}, None, True) == Identity("acme", 7)
    assert identity_from_request("/ws?tenant=acme&user=u-1", {}, None, True).user == "u-1"


def test_insecure_mode_still_verifies_tokens(token):
    assert identity_from_request(f"/ws?token={token}&tenant=x&user=1", {}, SECRET, True) == (
        Identity("acme", 42)
    )


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/ws", "needs"),
        ("/ws?tenant=acme", "needs"),
        ("/ws?user=1", "needs"),
        ("/ws?tenant=a%7Bb%7D&user=1", "tenant"),
        ("/ws?tenant=acme&user=", "user"),
        ("/ws?tenant=acme&user=-1", "user"),
    ],
)
def test_insecure_mode_refusals(path, needle):
    with pytest.raises(AuthError, match=needle):
        identity_from_request(path, {}, None, True)


# --- wsop token ---------------------------------------------------------------------

runner = CliRunner()


def test_cli_token_human_and_json(monkeypatch):
    monkeypatch.setenv("WSOP_SECRET", SECRET)
    human = runner.invoke(app, ["token", "--tenant", "acme", "--user", "42", "--ttl", "60"])
    assert human.exit_code == 0, human.output
    assert verify_token(SECRET, human.stdout.strip()) == Identity("acme", 42)
    assert human.stdout.count("\n") == 1

    as_json = runner.invoke(app, ["token", "--tenant", "acme", "--user", "u-1", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert verify_token(SECRET, json.loads(as_json.stdout)["token"]).user == "u-1"


def test_cli_secret_flag_overrides_env(monkeypatch):
    monkeypatch.setenv("WSOP_SECRET", SECRET)
    result = runner.invoke(app, ["token", "--tenant", "a", "--user", "1", "--secret", "k" * 40])
    assert result.exit_code == 0
    assert verify_token("k" * 40, result.stdout.strip()).tenant == "a"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--tenant", "acme", "--user", "1"], {}, "WSOP_SECRET"),
        (["--tenant", "acme", "--user", "1"], {"WSOP_SECRET": ""}, "WSOP_SECRET"),
        (["--tenant", "acme", "--user", "1", "--ttl", "0"], {"WSOP_SECRET": SECRET}, "ttl"),
        (["--tenant", "a{b}", "--user", "1"], {"WSOP_SECRET": SECRET}, "tenant"),
        (["--tenant", "acme", "--user", "-1"], {"WSOP_SECRET": SECRET}, "user"),
    ],
)
def test_cli_bad_input_exits_2(monkeypatch, args, env, needle):
    monkeypatch.delenv("WSOP_SECRET", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(app, ["token", *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert needle in result.stderr


def test_cli_subprocess_round_trip():
    done = run_wsop(
        "token", "--tenant", "acme", "--user", "42", env={"WSOP_SECRET": SECRET, "COLUMNS": "20"}
    )
    assert done.returncode == 0, done.stderr
    assert verify_token(SECRET, done.stdout.strip()) == Identity("acme", 42)
    assert done.stderr == ""


def test_cli_subprocess_short_secret_warns_on_stderr_only():
    done = run_wsop("token", "--tenant", "acme", "--user", "1", "--json", env={"WSOP_SECRET": "x"})
    assert done.returncode == 0, done.stderr
    assert verify_token("x", json.loads(done.stdout)["token"]).user == 1
    assert "warning" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "secret"),
    [
        (["--tenant", "acme", "--user", "1"], ""),
        (["--tenant", "acme", "--user", "1", "--ttl", "-1"], SECRET),
        (["--tenant", "bad tenant", "--user", "1"], SECRET),
        (["--tenant", "acme", "--user", "1", "--ttl", "soon"], SECRET),
    ],
)
def test_cli_subprocess_bad_input(args, secret):
    done = run_wsop("token", *args, env={"WSOP_SECRET": secret})
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.strip()
