"""`wsop`: the root command; every group lives in its own module and is registered here."""

from __future__ import annotations

import typer

from wsop import __version__
from wsop.cli import loadtest, online, redis_cmd, resolve, ring, seed, sidecar
from wsop.cli import token as token_cmd
from wsop.cli.app import new_app
from wsop.cli.drain import drain_cmd
from wsop.cli.lb import lb_cmd
from wsop.cli.manifests import inject_cmd, manifests_cmd
from wsop.cli.rebalance import rebalance_cmd
from wsop.cli.stack import down_cmd, scale_cmd, status_cmd, up_cmd

app = new_app(
    "wsop: multi-tenant real-time messaging toolkit — tenant bitmaps, hash ring, "
    "WebSocket stack, rebalancing and load tests.",
    root=True,
)
app.add_typer(seed.app, name="seed")
app.command("resolve")(resolve.resolve_cmd)
app.add_typer(online.app, name="online")
app.add_typer(redis_cmd.app, name="redis")
app.add_typer(ring.app, name="ring")
app.command("token")(token_cmd.token_cmd)
app.command("sidecar")(sidecar.sidecar_cmd)
app.command("lb")(lb_cmd)
app.command("up")(up_cmd)
app.command("scale")(scale_cmd)
app.command("status")(status_cmd)
app.command("down")(down_cmd)
app.command("rebalance")(rebalance_cmd)
app.command("drain")(drain_cmd)
app.command("inject")(inject_cmd)
app.command("manifests")(manifests_cmd)
app.command("loadtest")(loadtest.loadtest_cmd)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsop {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """wsop command line."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
