"""Token rules (issue 11), without sockets: integer time claims, leeway, maximum lifetime,
RS256/ES256 from a PEM key or a JWKS file, and the attacks the algorithm rule stops."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from typer.testing import CliRunner

from wsop.auth import (
    AuthError,
    BadRequest,
    Identity,
    TokenPolicy,
    TokenVerifier,
    identity_from_request,
    mint_token,
    verify_token,
)
from wsop.cli.main import app
from wsop.errors import UsageError
from wsop.jwtkeys import KeySet, SigningKey, load_jwks, load_private_key, load_public_key

SECRET = "s" * 32
NOW = 1_700_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(payload: str, key: bytes = SECRET.encode(), header: dict | None = None) -> str:
    """A token signed by hand: the payload is raw JSON text, so it can say 1e400 or NaN
    (and the key can be anything, e.g. a PEM public key PyJWT refuses as an HMAC key)."""
    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(payload.encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def claims_text(**times: str) -> str:
    fields = {"tenant": '"acme"', "sub": '"1"', "exp": str(NOW + 60), **times}
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items() if v is not None) + "}"


# --- time claims ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["NaN", "Infinity", "1e400", "-Infinity", f"{NOW + 60}.5", "true", "1e300"]
)
def test_exp_must_be_a_finite_integer(value):
    """NaN and Infinity (1e400 reads as inf) compare so that the token never expired."""
    with pytest.raises(AuthError, match="'exp' is not an integer"):
        verify_token(SECRET, hs256(claims_text(exp=value)), now=NOW)
    with pytest.raises(AuthError, match="'exp' is not an integer"):  # ...not even much later
        verify_token(SECRET, hs256(claims_text(exp=value)), now=NOW + 10**9)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400", "1.5", "false", '"0"', "-1"])
def test_nbf_and_iat_must_be_finite_integers(claim, value):
    with pytest.raises(AuthError, match=f"'{claim}' is not an integer"):
        verify_token(SECRET, hs256(claims_text(**{claim: value})), now=NOW)


def test_integral_json_numbers_are_integers():
    assert verify_token(SECRET, hs256(claims_text(exp=f"{NOW + 60}.0")), now=NOW).user == 1


def test_leeway_forgives_clock_skew_on_exp_nbf_and_iat():
    expired = hs256(claims_text(exp=str(NOW - 10)))
    early = hs256(claims_text(nbf=str(NOW + 10), iat=str(NOW + 10)))
    for token in (expired, early):
        assert verify_token(SECRET, token, now=NOW).user == 1  # default leeway: 30 s
        with pytest.raises(AuthError):
            verify_token(SECRET, token, now=NOW, policy=TokenPolicy(leeway_s=5))
    with pytest.raises(AuthError, match="issued in the future"):
        verify_token(SECRET, hs256(claims_text(iat=str(NOW + 31))), now=NOW)


def test_maximum_lifetime():
    day = 24 * 3600
    ok = hs256(claims_text(iat=str(NOW), exp=str(NOW + day)))
    too_long = hs256(claims_text(iat=str(NOW), exp=str(NOW + day + 1)))
    assert verify_token(SECRET, ok, now=NOW).user == 1
    with pytest.raises(AuthError, match=r"lifetime \(exp - iat: 86401 s\) exceeds .* 86400 s"):
        verify_token(SECRET, too_long, now=NOW)
    # without iat, what is left of it counts (beyond the leeway)
    with pytest.raises(AuthError, match="exp - now"):
        verify_token(SECRET, hs256(claims_text(exp=str(NOW + day + 31))), now=NOW)
    # a ten-year token, the kind that is good forever once leaked
    decade = mint_token(SECRET, "acme", 1, ttl_s=10 * 365 * day, now=NOW)
    with pytest.raises(AuthError, match="exceeds"):
        verify_token(SECRET, decade, now=NOW)
    unlimited = TokenPolicy(max_lifetime_s=0)
    assert verify_token(SECRET, decade, now=NOW, policy=unlimited).user == 1
    assert verify_token(SECRET, too_long, now=NOW, policy=TokenPolicy(max_lifetime_s=day + 1))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"leeway_s": -1}, "--leeway"),
        ({"leeway_s": 1.5}, "--leeway"),
        ({"max_lifetime_s": -5}, "--max-token-lifetime"),
        ({"max_lifetime_s": True}, "--max-token-lifetime"),
    ],
)
def test_policy_refuses_bad_settings(kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        TokenPolicy(**kwargs)


# --- RS256 / ES256 ---------------------------------------------------------------------------


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pem(key, private: bool = False) -> bytes:
    if private:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, object]:
    """An RSA and a P-256 key pair, their PEM files and a JWKS holding both (+ junk)."""
    where = tmp_path_factory.mktemp("keys")
    rsa_priv, ec_priv = rsa_key(), ec.generate_private_key(ec.SECP256R1())
    files = {}
    for name, key in (("rsa", rsa_priv), ("ec", ec_priv)):
        (where / f"{name}.pub").write_bytes(pem(key))
        (where / f"{name}.key").write_bytes(pem(key, private=True))
        files[name] = where / f"{name}.pub"
        files[f"{name}_key"] = where / f"{name}.key"
    jwks = {
        "keys": [
            {**json.loads(RSAAlgorithm.to_jwk(rsa_priv.public_key())), "kid": "r1"},
            {**json.loads(ECAlgorithm.to_jwk(ec_priv.public_key())), "kid": "e1", "use": "sig"},
            {**json.loads(RSAAlgorithm.to_jwk(rsa_key().public_key())), "kid": "x", "use": "enc"},
        ]
    }
    (where / "jwks.json").write_text(json.dumps(jwks))
    return {**files, "jwks": where / "jwks.json", "rsa_priv": rsa_priv, "ec_priv": ec_priv}


def signed(keys, kind: str, kid: str | None = None, **extra) -> str:
    key = SigningKey("RS256" if kind == "rsa" else "ES256", keys[f"{kind}_priv"], kid)
    if extra:
        claims = {"tenant": "acme", "sub": "9", "exp": int(time.time()) + 60, **extra}
        headers = {"kid": kid} if kid else None
        return jwt.encode(claims, key.key, algorithm=key.alg, headers=headers)
    return mint_token(key, "acme", 9, ttl_s=60)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_pem_public_key_verifies_its_algorithm(keys, kind):
    verifier = TokenVerifier.from_settings(public_key_file=keys[kind])
    assert verifier is not None
    assert verifier.verify(signed(keys, kind)) == Identity("acme", 9)
    other = "ec" if kind == "rsa" else "rsa"
    with pytest.raises(AuthError, match="does not match"):  # the key decides, not the token
        verifier.verify(signed(keys, other))
    with pytest.raises(AuthError, match="HS256 tokens are not accepted"):
        verifier.verify(mint_token(SECRET, "acme", 9, ttl_s=60))


def test_hs256_with_the_rsa_public_key_as_secret_is_refused(keys):
    """The classic confusion attack: the attacker knows the public key, signs an HS256
    token with its PEM bytes as the HMAC secret and hopes the server verifies HS256 with
    "its key". The key verifies RS256 only."""
    public_pem = keys["rsa"].read_bytes()
    forged = hs256(claims_text(exp=str(int(time.time()) + 60)), key=public_pem)
    only_rsa = TokenVerifier.from_settings(public_key_file=keys["rsa"])
    with pytest.raises(AuthError, match="HS256 tokens are not accepted"):
        only_rsa.verify(forged)
    both = TokenVerifier.from_settings(secret=SECRET, public_key_file=keys["rsa"])
    with pytest.raises(AuthError, match="signature"):
        both.verify(forged)
    # the same with the key in a JWKS
    with pytest.raises(AuthError, match="HS256 tokens are not accepted"):
        TokenVerifier.from_settings(jwks_file=keys["jwks"]).verify(forged)


def test_alg_none_and_unknown_algorithms_are_refused(keys):
    body = b64(claims_text(exp=str(int(time.time()) + 60)).encode())
    verifier = TokenVerifier.from_settings(secret=SECRET, public_key_file=keys["rsa"])
    for alg in ("none", "None", "HS512", "RS512", "PS256"):
        head = b64(json.dumps({"alg": alg}).encode())
        with pytest.raises(AuthError, match="not accepted"):
            verifier.verify(f"{head}.{body}.")
        with pytest.raises(AuthError, match="not accepted"):
            verifier.verify(f"{head}.{body}.c2ln")


def test_jwks_kid_selects_the_key(keys):
    verifier = TokenVerifier.from_settings(jwks_file=keys["jwks"])
    assert verifier.verify(signed(keys, "rsa", kid="r1")).user == 9
    assert verifier.verify(signed(keys, "ec", kid="e1")).user == 9
    with pytest.raises(AuthError, match="unknown token key id"):
        verifier.verify(signed(keys, "rsa", kid="nope"))
    with pytest.raises(AuthError, match="does not match"):  # an RSA token naming the EC key
        verifier.verify(signed(keys, "rsa", kid="e1"))
    with pytest.raises(AuthError, match="use is 'enc'"):
        verifier.verify(signed(keys, "rsa", kid="x"))
    with pytest.raises(AuthError, match="no 'kid'"):
        verifier.verify(signed(keys, "rsa"))
    # the time rules hold for every algorithm
    with pytest.raises(AuthError, match="'exp' is not an integer"):
        verifier.verify(signed(keys, "ec", kid="e1", exp=float("inf")))


def test_identity_from_request_with_a_verifier(keys):
    verifier = TokenVerifier.from_settings(jwks_file=keys["jwks"])
    token = signed(keys, "ec", kid="e1")
    headers = {"Authorization": f"Bearer {token}"}
    assert identity_from_request("/ws", headers, verifier) == Identity("acme", 9)
    with pytest.raises(AuthError, match="unknown token key id"):
        identity_from_request(f"/ws?token={signed(keys, 'rsa', kid='zz')}", {}, verifier)


def test_bad_key_files_are_usage_errors(keys, tmp_path: Path):
    (tmp_path / "junk.pem").write_text("not a key")
    (tmp_path / "small.pub").write_bytes(pem(rsa_key(1024)))
    (tmp_path / "p384.pub").write_bytes(pem(ec.generate_private_key(ec.SECP384R1())))
    (tmp_path / "bad.json").write_text('{"keys": []}')
    cases = [
        (lambda: load_public_key(tmp_path / "missing.pem"), "cannot read"),
        (lambda: load_public_key(tmp_path / "junk.pem"), "not a PEM public key"),
        (lambda: load_public_key(keys["rsa_key"]), "private key"),
        (lambda: load_public_key(tmp_path / "small.pub"), "1024 bits"),
        (lambda: load_public_key(tmp_path / "p384.pub"), "P-256"),
        (lambda: load_jwks(tmp_path / "bad.json"), "at least one key"),
        (lambda: load_jwks(tmp_path / "junk.pem"), "not JSON"),
        (lambda: load_private_key(keys["rsa"]), "not an unencrypted PEM private key"),
        (lambda: KeySet.load(None, keys["rsa"], keys["jwks"]), "not both"),
    ]
    for load, needle in cases:
        with pytest.raises(UsageError, match=needle):
            load()


def test_duplicate_or_malformed_authorization_is_a_bad_request():
    token = mint_token(SECRET, "acme", 1, ttl_s=60)
    doubled = [("Authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")]
    with pytest.raises(BadRequest, match="given 2 times") as info:
        identity_from_request("/ws", dict(doubled), SECRET)
    assert info.value.http_status == 400
    with pytest.raises(BadRequest, match="given 2 times"):
        identity_from_request(f"/ws?token={token}&token={token}", {}, SECRET)
    with pytest.raises(BadRequest, match="Bearer"):
        identity_from_request("/ws", {"Authorization": "Basic abc"}, SECRET)


# --- wsop token --private-key ----------------------------------------------------------------

runner = CliRunner()


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_cli_mints_with_a_private_key(keys, kind, monkeypatch):
    monkeypatch.delenv("WSOP_SECRET", raising=False)
    args = ["token", "--tenant", "acme", "--user", "007", "--private-key", str(keys[f"{kind}_key"])]
    done = runner.invoke(app, [*args, "--kid", "r1" if kind == "rsa" else "e1"])
    assert done.exit_code == 0, done.output
    token = done.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == ("RS256" if kind == "rsa" else "ES256")
    verifier = TokenVerifier.from_settings(jwks_file=keys["jwks"])
    assert verifier.verify(token) == Identity("acme", "007")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--secret", SECRET], "not both"),
        (["--private-key", "/nonexistent.pem"], "cannot read"),
    ],
)
def test_cli_private_key_refusals(keys, extra, needle):
    args = ["token", "--tenant", "acme", "--user", "1", "--private-key", str(keys["rsa_key"])]
    if extra[0] == "--private-key":
        args = args[:-2]
    done = runner.invoke(app, [*args, *extra])
    assert done.exit_code == 2 and needle in done.stderr and done.stdout == ""


def test_cli_warns_when_the_ttl_is_over_the_servers_default_limit(monkeypatch):
    monkeypatch.setenv("WSOP_SECRET", SECRET)
    done = runner.invoke(app, ["token", "--tenant", "a", "--user", "1", "--ttl", "90000"])
    assert done.exit_code == 0 and "max-token-lifetime" in done.stderr
