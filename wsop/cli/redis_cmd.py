"""`wsop redis status|stop`: the embedded default server."""

from __future__ import annotations

from rich.console import Console

from wsop.cli.app import new_app
from wsop.cli.options import JsonOpt
from wsop.cli.output import emit
from wsop.local import embedded

app = new_app("The embedded Redis that wsop starts when no --redis is given.")


@app.command("status")
def status_cmd(as_json: JsonOpt = False) -> None:
    """Is the embedded redis-server running, on which port, with data where."""
    state = embedded.status()

    def render(console: Console) -> None:
        if state.running:
            console.print(f"running: {state.url} (pid {state.pid}), data in {state.data_dir}")
        else:
            console.print(f"not running (data dir {state.data_dir})")

    emit(state.to_json(), as_json, render)


@app.command("start")
def start_cmd(as_json: JsonOpt = False) -> None:
    """Start the embedded redis-server (or reuse the running one)."""
    embedded.ensure_running()
    status_cmd(as_json)


@app.command("stop")
def stop_cmd(as_json: JsonOpt = False) -> None:
    """Stop the embedded redis-server; it snapshots its data first."""
    before = embedded.stop()

    def render(console: Console) -> None:
        console.print(f"stopped pid {before.pid}" if before.running else "was not running")

    emit({"stopped": before.running, "pid": before.pid}, as_json, render)
