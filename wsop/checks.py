"""Validation shared by the server configs and the sources that feed them.

`SidecarConfig` and `LBConfig` call these in `__post_init__`, so the library refuses
exactly what the CLI refuses (a config built in code gets the same one-line UsageError
as `wsop sidecar --port 70000`), and membership sources refuse the same member names.
"""

from __future__ import annotations

import math
import re
from typing import Final

from wsop.errors import UsageError

DNS_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_LABEL_CHARS: Final = 63
NAME_RULE: Final = (
    "a DNS label (RFC 1123): 1-63 lowercase letters, digits and '-', starting and ending "
    "with a letter or digit"
)


def is_member_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= MAX_LABEL_CHARS
        and DNS_LABEL_RE.fullmatch(name) is not None
    )


def check_member_name(name: object, what: str = "sidecar name") -> str:
    """A member name as a DNS label (RFC 1123), as `s0` and Kubernetes pod names are.

    Names travel in move frames (`"\\x00wsop:move NAME URL"`, space-separated), peer
    URLs (`/peer?from=NAME`), metrics labels and ring keys: a space, a comma or a `=`
    would break one of them, and two spellings of one pod ("S0", "s0") would be two
    ring members.
    """
    if not is_member_name(name):
        raise UsageError(f"invalid {what} {name!r}: use {NAME_RULE}")
    return name


def check_port(port: object, what: str = "port") -> int:
    """A TCP port to listen on: 1-65535, or 0 for "let the OS pick a free one" (the
    server then prints the port it got)."""
    if type(port) is not int or not 0 <= port <= 65535:
        raise UsageError(f"{what} must be 1-65535 (or 0 to pick a free one), got {port!r}")
    return port


def check_positive_int(value: object, what: str) -> int:
    if type(value) is not int or value <= 0:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")
    return value


def check_seconds(value: object, what: str, allow_zero: bool = True) -> float:
    """A finite duration in seconds (>= 0, or > 0 when `allow_zero` is false)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        bound = ">= 0" if allow_zero else "> 0"
        raise UsageError(f"{what} must be a number of seconds {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_host(host: object) -> str:
    if not isinstance(host, str) or not host or host != host.strip():
        raise UsageError(f"host must be an address or a name to listen on, got {host!r}")
    return host


HISTORY_BACKENDS: Final = ("memory", "redis", "off")
"""Where a sidecar keeps users' recent messages for `?since=` recovery (`--history`)."""


def check_history_backend(value: object) -> str:
    if value not in HISTORY_BACKENDS:
        raise UsageError(f"--history must be one of {', '.join(HISTORY_BACKENDS)}, got {value!r}")
    return str(value)
