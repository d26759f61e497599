"""`wsop publish`: send a message as the backend (`POST /publish`), print its ack."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer
from rich.console import Console

from wsop.checks import check_url
from wsop.cli.options import JsonOpt
from wsop.cli.output import emit
from wsop.errors import UsageError, WsopError

PUBLISH_TOKEN_ENV = "WSOP_PUBLISH_TOKEN"


class PublishRefused(WsopError):
    """The stack answered with an error (exit 1; with --json its error is on stdout)."""


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: json reads inf, which the stack refuses
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def parse_data(text: str) -> Any:
    """`--data`: one JSON value (strict: no NaN/Infinity, nor a number too large to be
    finite, which the stack refuses)."""
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        hint = "" if "out of range" in str(exc) else " (quote a string: --data '\"hi\"')"
        raise UsageError(f"--data is not JSON: {exc}{hint}") from None


def publish_cmd(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant to publish in.")],
    data: Annotated[
        str,
        typer.Option("--data", help="The message's data: one JSON value.", show_default=False),
    ],
    to: Annotated[
        str | None, typer.Option("--to", help="Recipient user id (a direct message).")
    ] = None,
    team: Annotated[
        list[str] | None,
        typer.Option("--team", help="Team name (a team message); repeat for several."),
    ] = None,
    msg_id: Annotated[
        str | None, typer.Option("--id", help="Correlation id, echoed in the ack.")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The LB or a sidecar (http(s):// or ws(s)://host:port); default: the local "
            "stack's LB.",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=PUBLISH_TOKEN_ENV,
            help="Publish token (or the admin token); default: minted with $WSOP_SECRET or "
            "the local stack's secret.",
            show_default=False,
        ),
    ] = None,
    sender: Annotated[
        str | None,
        typer.Option("--sender", help="`from` recipients see, for a minted token (default: null)."),
    ] = None,
    ca: Annotated[
        str | None,
        typer.Option("--ca", metavar="FILE", help="CA of an https:// stack (default: system's)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a direct or team message as the backend; print the ack (JSON: type, id,
    delivered, undelivered)."""
    from wsop import adminclient
    from wsop.cli.credentials import publish_credential

    if (to is None) == (not team):
        raise UsageError("give either --to USER or --team NAME (repeatable), not both")
    if token is not None and sender is not None:
        raise UsageError("--sender is for a minted token; a given token's 'sub' is its sender")
    body: dict[str, Any] = {"tenant": tenant}
    if to is not None:
        # as the text given: "7" is user 7 of an int tenant, "007" is refused there
        body |= {"type": "direct", "to": to}
    else:
        body |= {"type": "team", "teams": list(team or [])}
    body["data"] = parse_data(data)
    if msg_id is not None:
        body["id"] = msg_id
    _check_body(body)
    base, ca_file = _target(url, ca)
    credential = token or publish_credential(tenant, sender)
    reply = adminclient.post_json(f"{base}/publish", body, credential, ca=ca_file)
    try:
        answer = reply.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("type") not in ("ack", "error"):
        raise PublishRefused(f"{base} answered HTTP {reply.status} without a publish answer")
    if answer["type"] == "error":
        if as_json:
            emit(answer, True, lambda _: None)
        raise PublishRefused(f"{answer.get('code')} (HTTP {reply.status}): {answer.get('message')}")

    def render(console: Console) -> None:
        delivered, undelivered = answer["delivered"], answer["undelivered"]
        total = delivered + undelivered
        console.print(
            f"delivered to {delivered:,} of {total:,} recipient(s) in {tenant}"
            + (f" ({undelivered:,} undelivered)" if undelivered else "")
            + (f", id {answer['id']}" if answer.get("id") is not None else "")
        )

    emit(answer, as_json, render)


def _check_body(body: dict[str, Any]) -> None:
    """What the stack would refuse with 400, refused here (exit 2) by the very rules it
    applies (`wsop.protocol`): a tenant, `to`, team names, the id's length. `to` is read
    without the tenant's id mode, which only the stack knows: "007" still goes out."""
    from wsop.names import check_tenant
    from wsop.protocol import ProtocolError, message_from_object

    check_tenant(body["tenant"])
    try:
        message_from_object({k: v for k, v in body.items() if k != "tenant"})
    except ProtocolError as exc:
        flag = {"direct": "--to", "team": "--team"}[body["type"]]
        if exc.message.startswith("id "):
            flag = "--id"
        reason = exc.message.removeprefix(f"{body['type']}: ")
        raise UsageError(f"{flag}: {reason}") from None


def _target(url: str | None, ca: str | None) -> tuple[str, str | None]:
    """The base URL to publish to and the CA to check it with: `--url`, else the running
    local stack's LB (and its CA when it serves TLS)."""
    from wsop.adminclient import http_base

    if url is not None:
        check_url(url, "--url", ("http", "https", "ws", "wss"))
        return http_base(url.removesuffix("/publish")), ca
    from wsop.local.paths import StackNotRunning
    from wsop.local.stack_proc import running_record

    record = running_record()
    if record is None:
        raise StackNotRunning()
    return http_base(record.lb.url), ca or record.ca_file
