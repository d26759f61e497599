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


HOST_LABEL_RE: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")
MAX_DNS_NAME_CHARS: Final = 253
DNS_NAME_RULE: Final = (
    "a DNS name (RFC 1123): dot-separated labels of 1-63 ASCII letters, digits and '-', "
    "at most 253 characters (an internationalised name in its xn-- form)"
)


def check_dns_name(name: object, what: str = "DNS name", wildcard: bool = False) -> str:
    """A host name as a certificate's SAN or a resolver takes it (RFC 1123).

    A name that is not one ("bad name!", "é.com", a control character) would
    otherwise reach the certificate builder and fail there with its own ValueError,
    or worse, be accepted into a certificate no client can match. `wildcard` allows
    one leading "*." (a certificate may name "*.example.com").
    """
    text = name if isinstance(name, str) else ""
    if wildcard and text.startswith("*."):
        text = text[2:]
    labels = text.split(".")
    ok = (
        0 < len(text) <= MAX_DNS_NAME_CHARS
        and all(len(label) <= MAX_LABEL_CHARS for label in labels)
        and all(HOST_LABEL_RE.fullmatch(label) for label in labels)
    )
    if not ok:
        raise UsageError(f"invalid {what} {name!r}: use {DNS_NAME_RULE}")
    return name  # type: ignore[return-value]


def check_int_range(value: object, what: str, low: int, high: int) -> int:
    """An integer within [low, high]: the upper bound keeps a typo (`--days 99999999`)
    from reaching a library that overflows on it."""
    if type(value) is not int or not low <= value <= high:
        raise UsageError(f"{what} must be an integer from {low:,} to {high:,}, got {value!r}")
    return value


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


def is_finite_number(value: object) -> bool:
    """An int or a float (not a bool) that is neither NaN nor infinite: NaN passes every
    `< 0` test and never limits anything, inf prints as Infinity in --json."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_seconds(value: object, what: str, allow_zero: bool = True) -> float:
    """A finite duration in seconds (>= 0, or > 0 when `allow_zero` is false)."""
    ok = is_finite_number(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        bound = ">= 0" if allow_zero else "> 0"
        raise UsageError(f"{what} must be a number of seconds {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_rate(value: object, what: str) -> float:
    """A finite rate per second >= 0 (0: no limit). NaN compares false with everything,
    so a NaN limit would never limit; inf would print as Infinity in --json."""
    ok = is_finite_number(value)
    if not ok or value < 0:  # type: ignore[operator]
        raise UsageError(f"{what} must be a finite number >= 0 (0: no limit), got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_url(url: object, what: str, schemes: tuple[str, ...]) -> str:
    """A server URL `scheme://host[:port][/path]` whose host and port http.client can use.

    Checked where the user gives it: http.client would otherwise raise InvalidURL
    ("nonnumeric port") at the first request, an internal error naming no flag.
    """
    from urllib.parse import urlsplit

    form = f"{what} must be a URL {schemes[0]}://host[:port] ({', '.join(schemes)}), got {url!r}"
    if not isinstance(url, str) or any(c.isspace() or not c.isprintable() for c in url):
        raise UsageError(form)
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError: not a number, or out of 0-65535
    except ValueError as exc:
        raise UsageError(f"{form} ({exc})") from None
    if parts.scheme not in schemes or not parts.hostname or port == 0:
        raise UsageError(form)
    return url


def redact_url(url: str) -> str:
    """`url` with its password shown as `***` (`redis://user:***@host/0`): for every
    message that names a URL the user gave, so an error or a status line pasted into a
    ticket does not carry the credential."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def check_number(value: object, what: str, positive: bool = False) -> float:
    """A finite number >= 0 (> 0 when `positive`): a rate, a ratio, an epsilon. NaN
    passes every `<` test and inf prints as Infinity in --json, so both are refused."""
    ok = is_finite_number(value)
    if not ok or value < 0 or (positive and value == 0):  # type: ignore[operator]
        raise UsageError(
            f"{what} must be a finite number {'>' if positive else '>='} 0, got {value!r}"
        )
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
