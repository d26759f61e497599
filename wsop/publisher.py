"""A backend's credential for `POST /publish` and `GET /presence`: who publishes, for
which tenant, as which sender. No I/O.

Two credentials are accepted, both checked with what the servers already hold:

- a **publish token**: a JWT with claims `tenant`, `scope` holding `publish` (RFC 8693:
  a space-separated string, or a list), `exp` (and optionally `iat`, `nbf`), verified
  with the same keys and policy as client tokens (`WSOP_SECRET`, `--jwt-public-key`,
  `--jwks`). Its `sub`, when present, is the sender recipients see in `from`; without
  it they see `"from": null`. It publishes for its own tenant only, and it can never
  open a WebSocket session (`wsop.auth.TokenVerifier.verify` refuses it);
- the stack's **admin token** (`WSOP_ADMIN_TOKEN`), for operators: any tenant, sender
  null. It already authenticates the peer links, which carry deliveries for every
  tenant, so accepting it here grants nothing new.

A client token (no `publish` scope) is refused with 403: a user may not speak as the
backend, and a leaked browser token cannot reach every user of its tenant.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from wsop.auth import (
    PUBLISH_SCOPE,
    PUBLISHER_CLAIMS,
    TENANT_RULE,
    AuthError,
    ScopeError,
    TokenVerifier,
    bearer_token,
    sign_claims,
    single_header,
    token_scopes,
)
from wsop.errors import UsageError
from wsop.httpadmin import ADMIN_HEADER
from wsop.jwtkeys import SigningKey
from wsop.protocol import UserId, is_valid_tenant, normalize_user_id

DEFAULT_PUBLISH_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class Publisher:
    """Who sends through `POST /publish`: the tenant its token names (None: the admin
    token, trusted for every tenant), and the sender its messages carry (`from`; None
    when the token has no `sub`)."""

    tenant: str | None
    sender: UserId | None = None

    def check_tenant(self, tenant: str) -> None:
        """ScopeError (403) unless this publisher may act in `tenant`: never across."""
        if self.tenant is not None and self.tenant != tenant:
            raise ScopeError(f"this token is for tenant {self.tenant!r}, not {tenant!r}")


def mint_publish_token(
    secret: str | bytes | SigningKey,
    tenant: str,
    sender: UserId | None = None,
    ttl_s: int = DEFAULT_PUBLISH_TTL_S,
    now: float | None = None,
) -> str:
    """A publisher token for `tenant` (`scope: "publish"`), valid `ttl_s` seconds from
    `now`; `sender`, when given, is its `sub`: the `from` its messages carry."""
    if not is_valid_tenant(tenant):
        raise UsageError(f"bad tenant {tenant!r}: {TENANT_RULE}")
    if sender is not None and normalize_user_id(sender) is None:
        raise UsageError(f"bad sender {sender!r}: a printable string of at most 256 chars")
    if type(ttl_s) is not int or ttl_s <= 0:
        raise UsageError(f"ttl must be a positive number of seconds, got {ttl_s!r}")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"tenant": tenant, "scope": PUBLISH_SCOPE}
    if sender is not None:
        claims["sub"] = str(sender)
    claims |= {"iat": issued, "exp": issued + ttl_s}
    return sign_claims(secret, claims)


def verify_publisher(verifier: TokenVerifier, token: str, now: float | None = None) -> Publisher:
    """The publisher a token vouches for: it must hold the `publish` scope (ScopeError,
    403, for a client token); its `sub`, if any, is the sender."""
    claims = verifier.claims(token, now, PUBLISHER_CLAIMS)
    if PUBLISH_SCOPE not in token_scopes(claims):
        raise ScopeError(f"a client token cannot publish: it lacks the {PUBLISH_SCOPE!r} scope")
    sender = claims.get("sub")
    if sender is not None:
        sender = normalize_user_id(sender)
        if sender is None:
            raise AuthError("token 'sub' is not a valid sender name")
    return Publisher(claims["tenant"], sender)


def publisher_from_headers(
    headers: Mapping[str, str], verifier: TokenVerifier | None, admin_token: str | None
) -> Publisher:
    """Who sent this request: `Authorization: Bearer <publish token | admin token>` or
    `X-Wsop-Admin-Token: <admin token>`. AuthError (401) without a credential or with a
    bad one, ScopeError (403) for a client token, BadRequest (400) for a header given
    twice or an Authorization that is not Bearer. Never a query parameter: a token in a
    URL ends up in access logs."""
    admin = single_header(headers, ADMIN_HEADER)
    if admin is not None:
        if admin_token and hmac.compare_digest(admin.strip().encode(), admin_token.encode()):
            return Publisher(None)
        raise AuthError("wrong admin token")
    token = bearer_token(headers)
    if token is None:
        raise AuthError("missing credentials: send 'Authorization: Bearer <publish token>'")
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Publisher(None)
    if verifier is None:
        raise AuthError(
            "this server has no JWT secret or public key to check publish tokens with "
            "(it takes the admin token)"
        )
    return verify_publisher(verifier, token)
