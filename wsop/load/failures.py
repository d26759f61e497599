"""Why load users fail, in words that group well and stop a hopeless run early. Pure.

Both worlds import this: the users (gevent) name each failure with `stable_reason`,
the CLI reads the tallies and decides with `early_stop` / `no_one_connected`.

A failure's text is locust's key for grouping (locust_failures.csv has one row per
distinct text). websocket-client's handshake error embeds the response headers, Date
included, so one refused stack used to make one row per second; `stable_reason`
keeps only what identifies the cause: the status, its phrase and the server's
one-line reason.
"""

from __future__ import annotations

import re
from typing import Any

EARLY_REFUSALS = 10  # this many refused handshakes and nobody connected: stop the run
_HTTP = re.compile(r"^HTTP (\d{3}) ?([^:]*)(?:: (.*))?$")
_VOLATILE = (
    re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d \w{3} \d{4} [\d:]{8} GMT\b"),
    re.compile(r"\b0x[0-9a-fA-F]+\b"),
    re.compile(r"\b\d{5,}\b"),  # pids, ports of ephemeral sockets, timestamps
)


def scrub(text: str, limit: int = 160) -> str:
    """One line without the parts that change from one attempt to the next."""
    for pattern in _VOLATILE:
        text = pattern.sub("…", text)
    return " ".join(text.split())[:limit]


def stable_reason(exc: BaseException) -> str:
    """`HTTP 401 Unauthorized: missing token: …` for a refused handshake, else the
    exception's type and message, scrubbed (see the module docstring)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        phrase = getattr(exc, "status_message", None) or ""
        body = getattr(exc, "resp_body", None) or b""
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        detail = scrub(str(body).strip().splitlines()[0]) if str(body).strip() else ""
        return f"HTTP {status} {phrase}".rstrip() + (f": {detail}" if detail else "")
    return scrub(f"{type(exc).__name__}: {exc}")


def _refusals(errors: dict[str, int]) -> dict[str, int]:
    """The connect errors that are HTTP 4xx answers: the stack said no, and will
    say no again (a 5xx or a refused TCP connection may pass)."""
    out = {}
    for reason, count in errors.items():
        match = _HTTP.match(reason)
        if match and match.group(1).startswith("4"):
            out[reason] = count
    return out


def cause(reason: str, url: str, has_secret: bool) -> str:
    """The one line that says why users cannot connect, and what to do about it."""
    match = _HTTP.match(reason)
    if match is None:
        return f"{reason} from {url}"
    status, phrase, detail = match.group(1), match.group(2), match.group(3)
    head = f"{status} {phrase}".rstrip() + f" from {url}"
    if status == "401" and not has_secret:
        return f"{head}: set WSOP_SECRET or use --local"
    if status == "401":
        return f"{head} ({detail or 'token refused'}): is WSOP_SECRET the stack's secret?"
    return f"{head}: {detail}" if detail else head


def early_stop(point: dict[str, Any], connections: int, url: str, has_secret: bool) -> str | None:
    """Why to stop the run now, or None: nobody is connected and the stack has refused
    `EARLY_REFUSALS` handshakes (every user, when there are fewer)."""
    if point.get("ready"):
        return None
    refused = _refusals(point.get("connect_errors") or {})
    if sum(refused.values()) < max(1, min(connections, EARLY_REFUSALS)):
        return None
    return cause(max(refused, key=lambda r: refused[r]), url, has_secret)


def no_one_connected(result: dict[str, Any], url: str, has_secret: bool) -> str | None:
    """The verdict's line for a run in which no user ever got ready, naming the most
    frequent connect error (None if someone did, or nothing was recorded)."""
    errors = result.get("connect_errors") or {}
    if result.get("ready") or not errors:
        return None
    top = max(errors, key=lambda r: errors[r])
    return f"no user could connect ({errors[top]} attempts failed): {cause(top, url, has_secret)}"
