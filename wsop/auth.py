"""Who is on the other end of a connection: JWT minting and checking, no I/O.

A token carries `tenant`, `sub` (the user id) and `exp` (+ `iat`, `nbf`), signed with
HS256 (the secret in `WSOP_SECRET`) or RS256/ES256 (a PEM public key or a JWKS file:
`wsop.jwtkeys`). The LB calls `identity_from_request` with the request path and headers
it already has, so the whole handshake decision is testable without sockets.

A *publish* token (`scope` holding `publish`; `sub` optional: the sender clients see)
is checked with the same keys (`wsop.publisher`), for a backend's
`POST /publish`; it can never open a WebSocket session (`verify` refuses it), and a
client token can never publish, so neither credential stands in for the other.

The algorithm comes from the key, never from the token alone (`alg: none` and the RS/HS
confusion attack work that way). Time claims must be integers: `exp` of NaN, Infinity
or 1e400 would otherwise never expire; a `TokenPolicy` adds a leeway for clock skew
and a maximum lifetime (docs/security.md, "Tokens").
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import jwt

from wsop.errors import UsageError, WsopError
from wsop.jwtkeys import HS256, KeyChoiceError, KeySet, SigningKey
from wsop.protocol import UserId, is_valid_tenant, normalize_user_id

ALGORITHM: Final = HS256
SECRET_ENV: Final = "WSOP_SECRET"
# RFC 7518 §3.2: an HS256 key should be at least as long as the hash output.
MIN_SECRET_BYTES: Final = 32
DEFAULT_TTL_S: Final = 3600
DEFAULT_LEEWAY_S: Final = 30
"""Clock skew forgiven on `exp`, `nbf` and `iat` (seconds; `--leeway`)."""
DEFAULT_MAX_LIFETIME_S: Final = 24 * 3600
"""Longest token accepted, exp - iat (`--max-token-lifetime`; 0: no limit)."""
MAX_NUMERIC_DATE: Final = 2**53
"""Time claims beyond this are not dates (and not exact as JSON numbers elsewhere)."""
TENANT_RULE: Final = "tenant names match [A-Za-z0-9_.-]{1,64}"


class AuthError(WsopError):
    """The connection cannot be identified; the servers answer `http_status` (401)."""

    http_status = 401


class ScopeError(AuthError):
    """A valid token whose scope does not allow this (a client token on `/publish`, a
    publish token on `/ws`): HTTP 403, the credential is known but not good for it."""

    http_status = 403


class BadRequest(AuthError):
    """The handshake request itself is malformed (a header given twice, an Authorization
    header that is not `Bearer <token>`): HTTP 400, with the reason."""

    http_status = 400


@dataclass(frozen=True, slots=True)
class Identity:
    """The tenant and user a connection acts as; the only input to every ACL check."""

    tenant: str
    user: UserId


PUBLISH_SCOPE: Final = "publish"
"""The scope (JWT `scope` claim) that makes a token a backend's publisher credential."""


def check_secret(secret: str | bytes | None, hint: str = " (or pass --secret)") -> bytes:
    """The secret as bytes; an empty or missing one is a usage error, not a weak key.
    `hint` ends the message: what else the caller offers instead of the variable."""
    if not secret:
        raise UsageError(f"no JWT secret: set {SECRET_ENV}{hint}")
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def secret_warning(secret: str | bytes) -> str | None:
    """A one-line warning when the secret is shorter than HS256 deserves, else None.

    Short secrets still work (handy for local stacks); servers and `wsop token` print
    this once instead of PyJWT warning on every call.
    """
    size = len(check_secret(secret))
    if size < MIN_SECRET_BYTES:
        return f"{SECRET_ENV} is {size} bytes; use at least {MIN_SECRET_BYTES} random bytes"
    return None


def secret_from_env(
    environ: Mapping[str, str] | None = None, hint: str = " (or pass --secret)"
) -> str:
    """`WSOP_SECRET`, or a UsageError that says how to set it (`hint`: see check_secret)."""
    value = (os.environ if environ is None else environ).get(SECRET_ENV, "")
    check_secret(value, hint)
    return value


# Absent before PyJWT 2.10; then there is nothing to silence.
_KEY_WARNING: Final = getattr(jwt, "InsecureKeyLengthWarning", None)


def _jwt_call(key: bytes, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call PyJWT without its per-call short-key warning (`secret_warning` says it once)."""
    if len(key) >= MIN_SECRET_BYTES or _KEY_WARNING is None:
        return fn(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _KEY_WARNING)
        return fn(*args, **kwargs)


def mint_token(
    secret: str | bytes | SigningKey,
    tenant: str,
    user: UserId,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """A signed token for `user` of `tenant`, valid `ttl_s` seconds from `now`.

    `secret`: the HS256 secret, or a `SigningKey` (RS256/ES256, `wsop.jwtkeys`). `sub`
    is always written as a string (RFC 7519 says so) and exactly as given: `"007"` stays
    `"007"` (what it names depends on the tenant's id mode, see wsop/names.py).
    """
    if not isinstance(secret, SigningKey):
        check_secret(secret)
    if not is_valid_tenant(tenant):
        raise UsageError(f"bad tenant {tenant!r}: {TENANT_RULE}")
    canonical = normalize_user_id(user)
    if canonical is None:
        raise UsageError(
            f"bad user id {user!r}: a non-negative integer or a printable string ≤ 256 chars"
        )
    if type(ttl_s) is not int or ttl_s <= 0:
        raise UsageError(f"ttl must be a positive number of seconds, got {ttl_s!r}")
    issued = int(time.time() if now is None else now)
    claims = {"tenant": tenant, "sub": str(canonical), "iat": issued, "exp": issued + ttl_s}
    return sign_claims(secret, claims)


def sign_claims(secret: str | bytes | SigningKey, claims: dict[str, Any]) -> str:
    """A JWT of `claims`, signed with the HS256 secret or a `SigningKey`."""
    if isinstance(secret, SigningKey):
        headers = {"kid": secret.kid} if secret.kid else None
        return jwt.encode(claims, secret.key, algorithm=secret.alg, headers=headers)
    key = check_secret(secret)
    return _jwt_call(key, jwt.encode, claims, key, algorithm=ALGORITHM)


_DECODE_OPTIONS: Final = {
    # Time claims are checked below against `now`, so tests and replays are deterministic.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_sub": False,  # we accept an int `sub` from other issuers
    "verify_jti": False,
}
CLIENT_CLAIMS: Final = ("exp", "sub", "tenant")
PUBLISHER_CLAIMS: Final = ("exp", "tenant")


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The token's scopes: `scope` as RFC 8693 writes it (one space-separated string),
    or a list of strings (some issuers); none without the claim, AuthError otherwise."""
    scope = claims.get("scope")
    if scope is None:
        return frozenset()
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        return frozenset(scope)
    raise AuthError("token 'scope' must be a space-separated string or a list of strings")


def _seconds(value: object, flag: str) -> int:
    if type(value) is not int or value < 0:
        raise UsageError(f"{flag} must be a whole number of seconds >= 0, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """How strictly time claims are read: `leeway_s` of clock skew forgiven, and tokens
    living longer than `max_lifetime_s` refused (0: no limit), so a leaked or mis-minted
    long-lived token is not good forever."""

    leeway_s: int = DEFAULT_LEEWAY_S
    max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S

    def __post_init__(self) -> None:
        _seconds(self.leeway_s, "--leeway")
        _seconds(self.max_lifetime_s, "--max-token-lifetime")


def _numeric_date(claims: Mapping[str, Any], name: str) -> int | None:
    """A time claim as an int, None when absent; AuthError unless a finite integer.

    JSON has no integer type: 1700000000.0 is accepted, but 1.5, NaN, Infinity and 1e400
    (which Python reads as inf, and `now < inf` forever) are refused, as are bools.
    """
    value = claims.get(name)
    if value is None:
        return None
    if type(value) is float and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 <= value < MAX_NUMERIC_DATE:
        raise AuthError(f"token {name!r} is not an integer NumericDate (UNIX seconds)")
    return value


def check_times(claims: Mapping[str, Any], now: float, policy: TokenPolicy) -> None:
    """`exp`, `nbf`, `iat` and the lifetime against `now`, with the policy's leeway."""
    exp = _numeric_date(claims, "exp")
    nbf, iat = _numeric_date(claims, "nbf"), _numeric_date(claims, "iat")
    leeway = policy.leeway_s
    if exp is None:
        raise AuthError("token is missing the 'exp' claim")
    if now >= exp + leeway:
        raise AuthError("token has expired")
    if nbf is not None and now < nbf - leeway:
        raise AuthError("token is not valid yet ('nbf')")
    if iat is not None and iat > now + leeway:
        raise AuthError("token was issued in the future ('iat')")
    limit = policy.max_lifetime_s
    if limit:
        lifetime = exp - iat if iat is not None else exp - now - leeway
        if lifetime > limit:
            since = "iat" if iat is not None else "now"
            raise AuthError(
                f"token lifetime (exp - {since}: {int(lifetime)} s) exceeds the server's "
                f"maximum of {limit} s"
            )


class TokenVerifier:
    """Checks tokens against a server's keys and policy (`LBConfig`/`SidecarConfig` build
    one from their flags)."""

    def __init__(self, keys: KeySet, policy: TokenPolicy | None = None) -> None:
        self.keys = keys
        self.policy = policy or TokenPolicy()

    @classmethod
    def from_settings(
        cls,
        secret: str | bytes | None = None,
        public_key_file: str | Path | None = None,
        jwks_file: str | Path | None = None,
        leeway_s: int = DEFAULT_LEEWAY_S,
        max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S,
    ) -> TokenVerifier | None:
        """The verifier for a server's settings; None when it has no key at all (an
        `--insecure` stack without a secret). Bad files or values: UsageError."""
        policy = TokenPolicy(leeway_s, max_lifetime_s)
        keys = KeySet.load(check_secret(secret) if secret else None, public_key_file, jwks_file)
        return cls(keys, policy) if keys else None

    def claims(
        self, token: str, now: float | None = None, required: tuple[str, ...] = CLIENT_CLAIMS
    ) -> dict[str, Any]:
        """The claims of a token whose signature and times check out (and whose `tenant`
        is a valid name), or AuthError saying why not."""
        try:
            key = self.keys.select(jwt.get_unverified_header(token))
            # the key's one algorithm: the token's `alg` only had to name it
            args = (token, key.key)
            options = {**_DECODE_OPTIONS, "require": list(required)}
            kwargs = {"algorithms": [key.alg], "options": options}
            if key.alg == HS256:
                claims = _jwt_call(key.key, jwt.decode, *args, **kwargs)
            else:
                claims = jwt.decode(*args, **kwargs)
        except KeyChoiceError as exc:
            raise AuthError(str(exc)) from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token is missing the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError(f"token signature does not match the {key.name}") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("token algorithm is not accepted") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        check_times(claims, time.time() if now is None else now, self.policy)
        if not is_valid_tenant(claims["tenant"]):
            raise AuthError(f"token tenant is invalid: {TENANT_RULE}")
        return claims

    def verify(self, token: str, now: float | None = None) -> Identity:
        """The identity a client token vouches for, or AuthError saying why not (a
        publish token is a backend's: it opens no session, ScopeError)."""
        claims = self.claims(token, now)
        if PUBLISH_SCOPE in token_scopes(claims):
            raise ScopeError("a publish token cannot open a WebSocket session")
        user = normalize_user_id(claims["sub"])
        if user is None:
            raise AuthError("token 'sub' is not a valid user id")
        return Identity(claims["tenant"], user)


Verifier = TokenVerifier | str | bytes
"""What the checking functions take: a verifier, or just an HS256 secret (default policy)."""


def _verifier(key: Verifier) -> TokenVerifier:
    if isinstance(key, TokenVerifier):
        return key
    return TokenVerifier(KeySet(check_secret(key)))


def verify_token(
    key: Verifier, token: str, now: float | None = None, policy: TokenPolicy | None = None
) -> Identity:
    """The identity a token vouches for, or AuthError saying why not."""
    verifier = _verifier(key)
    if policy is not None:
        verifier = TokenVerifier(verifier.keys, policy)
    return verifier.verify(token, now)


def single_header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's one value (case-insensitive), None if absent; BadRequest if it is given
    more than once: two `Authorization` headers are ambiguous, so neither is believed
    (websockets' `Headers.get` would raise MultipleValuesError: an HTTP 500)."""
    get_all = getattr(headers, "get_all", None)
    if get_all is not None:
        values = list(get_all(name))
    else:
        lowered = name.lower()
        values = [v for k, v in headers.items() if k.lower() == lowered]
    if len(values) > 1:
        raise BadRequest(f"the {name} header is given {len(values)} times; send it once")
    return values[0] if values else None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer <token>`, None without the header; BadRequest
    for another scheme or a header given twice."""
    value = single_header(headers, "Authorization")
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise BadRequest("Authorization header must be 'Bearer <token>'")
    return credentials.strip()


def _one_param(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values and len(values) > 1:
        raise BadRequest(f"?{name}= is given {len(values)} times; give it once")
    return values[0] if values else None


def identity_from_request(
    path_with_query: str,
    headers: Mapping[str, str],
    verifier: Verifier | None,
    insecure: bool = False,
) -> Identity:
    """Decide who a WebSocket handshake is for, from its request line and headers.

    A token comes from `Authorization: Bearer …` (preferred) or `?token=…`; `verifier`
    is a `TokenVerifier` or an HS256 secret. With `insecure` (local dev stacks only),
    `?tenant=T&user=U` is trusted as is; a token, when present and the server has keys,
    still wins. The user id comes back as given (`normalize_user_id` without a mode):
    only the sidecar knows the tenant's id mode and makes it canonical.
    """
    query_text = path_with_query.partition("#")[0].partition("?")[2]  # (urlsplit can raise)
    query = parse_qs(query_text, keep_blank_values=True)
    token = bearer_token(headers)
    if token is None:
        token = _one_param(query, "token")
        if token == "":
            raise AuthError("empty ?token=")
    if token is not None and verifier:
        return _verifier(verifier).verify(token)
    if insecure:
        tenant, raw_user = _one_param(query, "tenant"), _one_param(query, "user")
        if tenant and raw_user is not None:
            user = normalize_user_id(raw_user)
            if not is_valid_tenant(tenant):
                raise AuthError(f"bad ?tenant=: {TENANT_RULE}")
            if user is None:
                raise AuthError("bad ?user=: a non-negative integer or a printable string")
            return Identity(tenant, user)
        raise AuthError("insecure mode needs ?tenant=T&user=U (or a token and a secret)")
    if token is None:
        raise AuthError("missing token: pass ?token=… or 'Authorization: Bearer …'")
    raise AuthError(
        f"the server has no JWT secret ({SECRET_ENV}) or public key to check tokens with"
    )
