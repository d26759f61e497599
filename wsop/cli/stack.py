"""`wsop up`, `wsop scale`, `wsop status`, `wsop down`: the local stack (see docs/stack.md)."""

from __future__ import annotations

import contextlib
import signal
from typing import Annotated, Any

import typer
from rich.console import Console

from wsop.checks import redact_url
from wsop.cli.app import interrupt_on_sigterm
from wsop.cli.options import HistoryOpt, JsonOpt, QuotasFileOpt, RedisOpt
from wsop.cli.output import emit, err_console, titled_table

SidecarsOpt = Annotated[int, typer.Option("--sidecars", help="Number of sidecar processes.")]


def connect_hint(payload: dict[str, Any]) -> list[str]:
    """What `wsop up` says last: how a client gets in, with the command to copy."""
    ws = f"{payload['lb']['url']}/ws"
    if payload["insecure"]:
        return [f"clients connect to {ws}?tenant=TENANT&user=USER (no token: --insecure)"]
    return [
        f"clients connect to {ws}?token=TOKEN; mint one (this stack's secret is found "
        "automatically):",
        "  wsop token --tenant acme --user 1",
    ]


def _render(payload: dict[str, Any], title: str, hint: bool = False) -> Any:
    def render(console: Console) -> None:
        table = titled_table(title)
        for column in ("role", "name", "url", "pid", "state", "connections"):
            table.add_column(
                column, justify="right" if column in ("pid", "connections") else "left"
            )
        rows = [("lb", payload["lb"]), *(("sidecar", s) for s in payload["sidecars"])]
        for role, member in rows:
            count = member.get("connections")
            table.add_row(
                role,
                member["name"],
                member["url"] + ("/ws" if role == "lb" else ""),
                str(member["pid"]),
                "[green]up[/]" if member["alive"] else "[red]down[/]",
                "-" if count is None else str(count),
            )
        console.print(table)
        mode = "[bold red]INSECURE (?tenant=&user= trusted)[/]" if payload["insecure"] else "JWT"
        console.print(
            f"algo {payload['algo']} · auth {mode} · redis {redact_url(payload['redis_url'])}\n"
            f"members file {payload['members_file']}"
            + (f"\nTLS: clients trust {payload['ca_file']}" if payload.get("ca_file") else ""),
            highlight=False,
        )
        for line in connect_hint(payload) if hint else ():
            console.print(line, highlight=False, markup=False, soft_wrap=True)

    return render


def up_cmd(
    sidecars: SidecarsOpt = 2,
    port: Annotated[int, typer.Option("--port", help="The LB's port (clients: /ws).")] = 8765,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once up; stop later with `wsop down`.")
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Trust ?tenant=T&user=U without a token (dev only).")
    ] = False,
    algo: Annotated[str | None, typer.Option("--algo", help="Ring algorithm.")] = None,
    redis_url: RedisOpt = None,
    quotas: QuotasFileOpt = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="wss:// everywhere, with a certificate from a CA made for this stack."
        ),
    ] = False,
    history: HistoryOpt = "memory",
    trunks: Annotated[
        int | None,
        typer.Option(
            "--trunks",
            help="The LB's persistent connections per sidecar (0: one per client); "
            "default: the LB's (2, or $WSOP_LB_TRUNKS).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start Redis (embedded by default), N sidecars and the LB on loopback."""
    from wsop.local import stack

    if insecure and not as_json:
        err_console.print(
            "[bold red]WARNING: insecure stack: anyone reaching the LB can act as any "
            "tenant and user.[/]",
            highlight=False,
        )
    interrupt_on_sigterm()
    if detach:
        payload = {
            **stack.up(
                sidecars, port, insecure, algo, redis_url, quotas, tls, history, trunks
            ).to_json(),
            "detached": True,
        }
        emit(payload, as_json, _render(payload, "wsop stack is up", hint=True))
        return
    started = False
    try:  # any way out of the foreground brings the stack down, even mid-start
        up = stack.up(sidecars, port, insecure, algo, redis_url, quotas, tls, history, trunks)
        payload = {**up.to_json()}
        started = True
        payload["detached"] = False
        emit(payload, as_json, _render(payload, "wsop stack is up", hint=True))
        if not as_json:
            err_console.print("Ctrl-C stops the stack.", highlight=False)
        stack.watch_foreground()
        err_console.print("the stack went away; exiting", highlight=False)
    except KeyboardInterrupt:
        if not started:
            raise  # interrupted start-up (already cleaned up by `up`): exit 130
    finally:
        # a second Ctrl-C/TERM must not interrupt the teardown half-way
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if started:
            with contextlib.suppress(stack.StackNotRunning):
                stack.down()
                if not as_json:
                    err_console.print("stack stopped", highlight=False)


def scale_cmd(sidecars: SidecarsOpt, as_json: JsonOpt = False) -> None:
    """Add sidecars (s{k}) or stop the highest-numbered ones; the LB follows."""
    from wsop.local import stack

    interrupt_on_sigterm()
    payload = stack.scale(sidecars).to_json()
    emit(payload, as_json, _render(payload, f"scaled to {sidecars} sidecars"))


def status_cmd(as_json: JsonOpt = False) -> None:
    """The LB and the sidecars of the local stack, with live connections each."""
    from wsop.local import stack

    payload = stack.status().to_json()
    emit(payload, as_json, _render(payload, "wsop stack"))


def down_cmd(as_json: JsonOpt = False) -> None:
    """Stop the local stack (the LB first, then the sidecars) and remove its members file."""
    from wsop.local import stack

    payload = stack.down().to_json()

    def render(console: Console) -> None:
        stopped = ", ".join(payload["stopped"]) or "nothing"
        console.print(f"stopped {stopped}", highlight=False)
        if payload["killed"]:
            console.print(f"[yellow]had to SIGKILL {', '.join(payload['killed'])}[/]")

    emit(payload, as_json, render)
