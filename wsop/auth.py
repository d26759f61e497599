"""Who is on the other end of a connection: JWT (HS256) minting and checking, no I/O.

A token carries `tenant`, `sub` (the user id) and `exp` (+ `iat`); the secret comes from
`WSOP_SECRET`. The LB calls `identity_from_request` with the request path and headers
it already has, so the whole handshake decision is testable without sockets.

Only HS256 is accepted on verification: a token's own `alg` header never chooses the
algorithm (that is how `alg: none` and RS/HS confusion attacks work).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import jwt

from wsop.errors import UsageError, WsopError
from wsop.protocol import UserId, is_valid_tenant, normalize_user_id

ALGORITHM: Final = "HS256"
SECRET_ENV: Final = "WSOP_SECRET"
# RFC 7518 §3.2: an HS256 key should be at least as long as the hash output.
MIN_SECRET_BYTES: Final = 32
DEFAULT_TTL_S: Final = 3600
TENANT_RULE: Final = "tenant names match [A-Za-z0-9_.-]{1,64}"


class AuthError(WsopError):
    """The connection cannot be identified; the LB answers HTTP 401 and closes."""

    http_status = 401


@dataclass(frozen=True, slots=True)
class Identity:
    """The tenant and user a connection acts as; the only input to every ACL check."""

    tenant: str
    user: UserId


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
    secret: str | bytes,
    tenant: str,
    user: UserId,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """A signed token for `user` of `tenant`, valid `ttl_s` seconds from `now`.

    `sub` is always written as a string (RFC 7519 says so, and recent PyJWT checks);
    a digit string reads back as the int user id.
    """
    key = check_secret(secret)
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
    return _jwt_call(key, jwt.encode, claims, key, algorithm=ALGORITHM)


_DECODE_OPTIONS: Final = {
    # Time claims are checked below against `now`, so tests and replays are deterministic.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_sub": False,  # we accept an int `sub` from other issuers
    "require": ["exp", "sub", "tenant"],
}


def _is_number(value: object) -> bool:
    return type(value) is int or type(value) is float


def verify_token(secret: str | bytes, token: str, now: float | None = None) -> Identity:
    """The identity a token vouches for, or AuthError saying why not."""
    key = check_secret(secret)
    try:
        claims = _jwt_call(
            key, jwt.decode, token, key, algorithms=[ALGORITHM], options=_DECODE_OPTIONS
        )
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token is missing the {exc.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise AuthError("token signature does not match the secret") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(f"token algorithm is not {ALGORITHM}") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"malformed token: {exc}") from None

    current = time.time() if now is None else now
    exp = claims["exp"]
    if not _is_number(exp):
        raise AuthError("token 'exp' is not a number")
    if current >= exp:
        raise AuthError("token has expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_number(nbf) or current < nbf):
        raise AuthError("token is not valid yet")
    tenant = claims["tenant"]
    if not is_valid_tenant(tenant):
        raise AuthError(f"token tenant is invalid: {TENANT_RULE}")
    user = normalize_user_id(claims["sub"])
    if user is None:
        raise AuthError("token 'sub' is not a valid user id")
    return Identity(tenant, user)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works for dicts and websockets' Headers."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = _header(headers, "Authorization")
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise AuthError("Authorization header must be 'Bearer <token>'")
    return credentials.strip()


def identity_from_request(
    path_with_query: str,
    headers: Mapping[str, str],
    secret: str | bytes | None,
    insecure: bool = False,
) -> Identity:
    """Decide who a WebSocket handshake is for, from its request line and headers.

    A token comes from `Authorization: Bearer …` (preferred) or `?token=…`. With
    `insecure` (local dev stacks only), `?tenant=T&user=U` is trusted as is; a token,
    when present and a secret is configured, still wins.
    """
    query = parse_qs(urlsplit(path_with_query).query, keep_blank_values=True)
    token = _bearer(headers)
    if token is None and "token" in query:
        token = query["token"][-1]
        if not token:
            raise AuthError("empty ?token=")
    if token is not None and secret:
        return verify_token(secret, token)
    if insecure:
        tenants, users = query.get("tenant"), query.get("user")
        if tenants and users:
            tenant, user = tenants[-1], normalize_user_id(users[-1])
            if not is_valid_tenant(tenant):
                raise AuthError(f"bad ?tenant=: {TENANT_RULE}")
            if user is None:
                raise AuthError("bad ?user=: a non-negative integer or a printable string")
            return Identity(tenant, user)
        raise AuthError("insecure mode needs ?tenant=T&user=U (or a token and a secret)")
    if token is None:
        raise AuthError("missing token: pass ?token=… or 'Authorization: Bearer …'")
    raise AuthError(f"the server has no JWT secret ({SECRET_ENV}) to check tokens with")
