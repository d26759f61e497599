"""`wsop`: the root command. Every command lives in its own module, listed here in the
order of the work and imported only when it runs (see `wsop.cli.lazy`)."""

from __future__ import annotations

from typing import Annotated

import typer

from wsop import __version__
from wsop.cli.app import new_app
from wsop.cli.lazy import ACL, KUBERNETES, LOAD, PLACEMENT, STACK, LazyCommand, LazyGroup

COMMANDS = (
    LazyCommand("seed", "wsop.cli.seed:app",
                "Write tenant access bitmaps from a synthetic spec or CSV files.", ACL),
    LazyCommand("resolve", "wsop.cli.resolve:resolve_cmd",
                "Who receives a message to these teams: (OR of the teams) AND online.", ACL),
    LazyCommand("online", "wsop.cli.online:app",
                "Who is online (list, count); mark users online or offline by hand.", ACL),
    LazyCommand("redis", "wsop.cli.redis_cmd:app",
                "Start, inspect or stop the embedded Redis used without --redis.", ACL),
    LazyCommand("ring", "wsop.cli.ring:app",
                "Which sidecar owns a user, and what a membership change would move.",
                PLACEMENT),
    LazyCommand("up", "wsop.cli.stack:up_cmd",
                "Start the local stack: Redis, N sidecars and the LB on loopback.", STACK),
    LazyCommand("status", "wsop.cli.stack:status_cmd",
                "The local stack's processes and their live connections.", STACK),
    LazyCommand("scale", "wsop.cli.stack:scale_cmd",
                "Add sidecars, or drain and stop the highest-numbered ones.", STACK),
    LazyCommand("down", "wsop.cli.stack:down_cmd",
                "Stop the local stack (the LB first, then the sidecars).", STACK),
    LazyCommand("token", "wsop.cli.token:token_cmd",
                "Mint a client token (JWT) for one user of one tenant, or a publish token.",
                STACK),
    LazyCommand("publish", "wsop.cli.publish:publish_cmd",
                "Send a message as the backend (POST /publish) and print its ack.", STACK),
    LazyCommand("lb", "wsop.cli.lb:lb_cmd",
                "Run the WebSocket load balancer in the foreground.", STACK),
    LazyCommand("sidecar", "wsop.cli.sidecar:sidecar_cmd",
                "Run one proxy sidecar in the foreground.", STACK),
    LazyCommand("rebalance", "wsop.cli.rebalance:rebalance_cmd",
                "Move live connections back onto their ring owners, at a steady rate.",
                KUBERNETES),
    LazyCommand("drain", "wsop.cli.drain:drain_cmd",
                "Move every client off one sidecar, live, before it stops.", KUBERNETES),
    LazyCommand("inject", "wsop.cli.manifests:inject_cmd",
                "Add the wsop sidecar to labelled Deployments in a YAML stream.", KUBERNETES),
    LazyCommand("manifests", "wsop.cli.manifests:manifests_cmd",
                "The LB, the sidecars' Service, RBAC and ConfigMap for a cluster, as YAML.",
                KUBERNETES),
    LazyCommand("webhook", "wsop.cli.webhook:app",
                "Inject the sidecar at pod creation: admission webhook server and its certs.",
                KUBERNETES),
    LazyCommand("loadtest", "wsop.cli.loadtest:loadtest_cmd",
                "Drive the stack with locust and account for every delivery.", LOAD),
)  # fmt: skip


class Root(LazyGroup):
    commands_spec = COMMANDS


app = new_app(
    "wsop: multi-tenant real-time messaging — tenant bitmaps, hash ring, WebSocket stack, "
    "rebalancing and load tests.",
    cls=Root,
    name="wsop",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsop {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """wsop command line."""


def main() -> None:
    app(prog_name="wsop")


if __name__ == "__main__":
    main()
