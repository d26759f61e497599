"""Names: what a tenant, a team and a user may be called — one rule each, shared by the
wire format (`wsop.protocol`), tokens (`wsop.auth`), the Redis key layout (`wsop.acl`)
and the CLI. Pure, and at the bottom of the house: everything may import it.

Tenant and team names: no `{`/`}` — they end up inside Redis keys, where braces are the
Redis Cluster hash-tag delimiters. Always `fullmatch`: with `match`, a `$` anchor lets a
trailing "\n" in.

User ids: the one rule that says who a user id names, per tenant id mode.

A user's identity is its *text*, exactly: an integer n is written `str(n)`, a string is
itself. So `42` and `"42"` are one user, and `"007"` and `"7"` are two. What a tenant
accepts depends on its id mode (`wsop seed … --string-ids` picks it, once):

- `int` tenants: ids are bit positions. Only canonical decimal integers: `7` or `"7"`
  (a JWT `sub` is a string, RFC 7519), never `"007"`, `"+7"`, `" 7"`, `"7.0"`, `True`.
  Every id is an `int` in the stack.
- `string` tenants: ids (UUIDs, names…) map to dense bit positions through a directory.
  Any printable string of 1-256 chars without surrounding spaces (except a signed
  number such as "-1": a typo, refused everywhere); an integer n means the string
  `str(n)`. Every id is a `str` in the stack, so `"007"`, `"7"` and `"42"`
  are three users whichever path (token, `?user=`, a frame's `to`, the directory, team
  resolution, presence) they come by.

Because the text is the identity, the ring (which hashes `f"{tenant}\\x1f{user}"`)
places a user the same whether the LB saw the raw `"7"` or a sidecar the canonical 7,
and the type of a canonical id tells its tenant's mode (`IdMode.of`).

A user id is also a bit position, so an unchecked huge id is a memory bomb (one id of
2^32-1 makes Redis allocate 512 MiB): integer ids are bounded by the tenant's
`max_users` (`parse_int_id`) before they can reach SETBIT or a seeded bitmap.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from typing import Final

from wsop.errors import UsageError

TENANT_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TEAM_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise UsageError(
            f"invalid tenant name {tenant!r}: use 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return tenant


DEFAULT_MAX_USERS = 1 << 24
MAX_STRING_ID_CHARS: Final = 256
# Integer ids are bit offsets; the ACL layer enforces its own (smaller) max_users. This
# bound only keeps absurd integers out of the stack.
MAX_NUMERIC_USER_ID: Final = 2**63 - 1
_MAX_DIGITS: Final = len(str(MAX_NUMERIC_USER_ID))

UserId = int | str

INT_RULE: Final = "a non-negative integer without sign, spaces or leading zeros"
STRING_RULE: Final = (
    f"a printable string of 1-{MAX_STRING_ID_CHARS} chars without surrounding spaces "
    "(and not a signed number)"
)


class IdMode(StrEnum):
    """`int`: ids are bit positions. `string`: ids (UUIDs…) map to dense bit positions."""

    INT = "int"
    STRING = "string"

    @classmethod
    def of(cls, user: UserId) -> IdMode:
        """The mode of the tenant a *canonical* id belongs to (its type says it)."""
        return cls.STRING if isinstance(user, str) else cls.INT

    @property
    def rule(self) -> str:
        return STRING_RULE if self is IdMode.STRING else INT_RULE


def int_id(value: object) -> int | None:
    """The canonical integer `value` names (an int, or its exact decimal text), or None."""
    if type(value) is int:
        return value if 0 <= value <= MAX_NUMERIC_USER_ID else None
    if type(value) is not str or not 0 < len(value) <= _MAX_DIGITS:
        return None
    if not (value.isascii() and value.isdigit()) or (value[0] == "0" and value != "0"):
        return None  # "٣", "+7", " 7", "1_000" and "007" are not the canonical spelling
    number = int(value)
    return number if number <= MAX_NUMERIC_USER_ID else None


def string_id(value: object) -> str | None:
    """`value` as a string-tenant id (an int n is the string `str(n)`), or None.

    isprintable also rejects lone surrogates, which could not be encoded for Redis.
    """
    if type(value) is int:
        return str(value) if 0 <= value <= MAX_NUMERIC_USER_ID else None
    if type(value) is not str or not 0 < len(value) <= MAX_STRING_ID_CHARS:
        return None
    if value[0] in "+-" and value[1:].isascii() and value[1:].isdigit():
        return None  # "-1" is a typo'd number, not a name, in every mode
    return value if value.isprintable() and value == value.strip() else None


def canonical_user_id(value: object, mode: IdMode | None) -> UserId | None:
    """The id `value` names in a tenant of `mode`, or None if that tenant has no such user.

    `mode=None` is for where the tenant is not known yet (the LB, a token being minted):
    an id some mode could accept, with its text unchanged (a canonical integer as an int,
    anything else as the string it is); the sidecar, which knows the mode, decides.
    """
    if mode is IdMode.INT:
        return int_id(value)
    if mode is IdMode.STRING:
        return string_id(value)
    number = int_id(value)
    return number if number is not None else string_id(value)


def default_max_users() -> int:
    raw = os.environ.get("WSOP_MAX_USERS")
    if not raw:
        return DEFAULT_MAX_USERS
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"WSOP_MAX_USERS must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise UsageError(f"WSOP_MAX_USERS must be a positive integer, got {raw!r}")
    return value


def parse_int_id(raw: object, max_users: int) -> int:
    """An integer user id in [0, max_users), or a UsageError that says what is wrong.

    Only the canonical spelling: a file or a command line that says "007" or "+7" would
    otherwise seed a user under a name no connection can ever use.
    """
    value = int_id(raw)
    if value is None:
        text = str(raw) if type(raw) is int else raw if isinstance(raw, str) else ""
        bare = text.strip().lstrip("+-")
        if not (bare.isascii() and bare.isdigit()):
            raise UsageError(
                f"user id {raw!r} is not an integer (a tenant's ids are integers unless it "
                "was seeded with `wsop seed load --string-ids`)"
            )
        if text.strip().startswith("-"):
            raise UsageError(f"user id {text.strip()} is negative")
        if text != bare or bare[0] == "0":
            raise UsageError(f"user id {raw!r} is not written as {INT_RULE}")
        raise UsageError(f"user id {bare} is too large (max_users is {max_users})")
    if value >= max_users:
        raise UsageError(
            f"user id {value} is too large: max_users is {max_users} "
            "(raise it with --max-users / WSOP_MAX_USERS)"
        )
    return value


def check_string_id(raw: object) -> str:
    """A string-tenant user id exactly as given, or a UsageError (never trimmed: " 7" and
    "7" must not become one user behind the user's back)."""
    value = string_id(raw)
    if value is None:
        raise UsageError(f"string user id {raw!r} must be {STRING_RULE}")
    return value
