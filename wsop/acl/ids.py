"""User ids: validation of integer bit positions and the string-id mode.

A user id is a bit position, so an unchecked huge id is a memory bomb (one id of
2^32-1 makes Redis allocate 512 MiB). Every id passes through `parse_int_id` with the
tenant's `max_users` before it can reach SETBIT or a seeded bitmap.
"""

from __future__ import annotations

import os
from enum import StrEnum

from wsop.errors import UsageError

DEFAULT_MAX_USERS = 1 << 24


class IdMode(StrEnum):
    """`int`: ids are bit positions. `string`: ids (UUIDs…) map to dense bit positions."""

    INT = "int"
    STRING = "string"


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
    """An integer user id in [0, max_users), or a UsageError that says what is wrong."""
    if isinstance(raw, bool):
        raise UsageError(f"user id {raw!r} is not an integer")
    if isinstance(raw, int):
        value = raw
    else:
        text = str(raw).strip()
        try:
            value = int(text, 10)
        except ValueError:
            raise UsageError(
                f"user id {text!r} is not an integer (use --string-ids for UUID-style ids)"
            ) from None
    if value < 0:
        raise UsageError(f"user id {value} is negative")
    if value >= max_users:
        raise UsageError(
            f"user id {value} is too large: max_users is {max_users} "
            "(raise it with --max-users / WSOP_MAX_USERS)"
        )
    return value


def check_string_id(raw: object) -> str:
    text = str(raw).strip()
    if not text or len(text) > 256:
        raise UsageError(f"string user id {text!r} must be 1-256 characters")
    return text
