"""`wsop rebalance`: move live connections back onto their ring owners, within 1 + ε.

Thin: flags pick the fleet (the local stack or a label selector in a namespace),
`wsop.k8s.rebalance` gathers, plans and executes, and one result object feeds both the
rich table and `--json`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wsop.checks import check_number
from wsop.cli.options import JsonOpt
from wsop.cli.output import emit, err_console, titled_table
from wsop.errors import UsageError
from wsop.k8s.discovery import DEFAULT_SELECTOR
from wsop.ring import DEFAULT_EPSILON

DEFAULT_RATE = 50.0


def rebalance_cmd(
    local: Annotated[
        bool, typer.Option("--local", help="Rebalance the stack `wsop up` started.")
    ] = False,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Kubernetes namespace of the sidecar pods."),
    ] = None,
    selector: Annotated[
        str | None,
        typer.Option(
            "--selector",
            "-l",
            help=f"Label selector of the sidecar pods (default: {DEFAULT_SELECTOR}).",
        ),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option("--service", help="Also require readiness in this Service's EndpointSlices."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="Sidecar port when the pod spec names no 'wsop' port."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan and show; move nothing.")
    ] = False,
    max_moves: Annotated[
        int | None,
        typer.Option(
            "--max-moves",
            help="Move at most this many users (default: the whole plan).",
            show_default=False,
        ),
    ] = None,
    rate: Annotated[float, typer.Option("--rate", help="Moves per second.")] = DEFAULT_RATE,
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Target: max load ≤ ⌈(1+ε)·mean⌉ connections.")
    ] = DEFAULT_EPSILON,
    algo: Annotated[
        str | None,
        typer.Option(
            "--algo", help="Ring algorithm of the stack (default: the local stack's, else maglev)."
        ),
    ] = None,
    kubeconfig: Annotated[
        Path | None, typer.Option("--kubeconfig", metavar="FILE", help="Path to a kubeconfig.")
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="kubeconfig context to use.")
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            envvar="WSOP_ADMIN_TOKEN",
            show_default=False,
            help="The sidecars' admin token (Kubernetes; --local reads the members file).",
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep running: rebalance whenever the sidecars change (EndpointSlices of "
            "--service, default wsop-sidecars; --local: the members file).",
        ),
    ] = False,
    debounce: Annotated[
        float, typer.Option("--debounce", help="--watch: act this long after the last change.")
    ] = 5.0,
    max_delay: Annotated[
        float, typer.Option("--max-delay", help="--watch: …but at most this long after the first.")
    ] = 60.0,
    resync: Annotated[
        float, typer.Option("--resync", help="--watch: also run this often (seconds).")
    ] = 300.0,
    retry: Annotated[
        float, typer.Option("--retry", help="--watch: rerun this soon after a run left work.")
    ] = 10.0,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="--watch: serve Prometheus metrics on this port."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="--watch: address for the metrics port.")
    ] = "0.0.0.0",
    lease: Annotated[
        str,
        typer.Option("--lease", help="--watch on Kubernetes: the Lease that elects one leader."),
    ] = "wsop-rebalancer",
    identity: Annotated[
        str | None,
        typer.Option(
            "--identity",
            help="--watch: this replica's name in the Lease (default: pod name / host-pid).",
            show_default=False,
        ),
    ] = None,
    lease_duration: Annotated[
        float, typer.Option("--lease-duration", help="--watch: seconds a Lease stays valid.")
    ] = 15.0,
    as_json: JsonOpt = False,
) -> None:
    """Gather every sidecar's connections, plan the fewest moves, and apply them at --rate."""
    from wsop.k8s.rebalance import kubernetes_fleet, local_fleet, rebalance

    if local == (namespace is not None):
        raise UsageError("give exactly one of --local or --namespace NS [--selector SEL]")
    if local and (selector or kubeconfig or context or service):
        raise UsageError(
            "--selector/--service/--kubeconfig/--context need --namespace, not --local"
        )
    if max_moves is not None and max_moves < 0:
        raise UsageError(f"--max-moves must be ≥ 0, got {max_moves}")
    check_number(rate, "--rate (moves per second)", positive=True)
    check_number(epsilon, "--epsilon")
    if watch:
        from wsop.cli.rebalance_watch import WatchFlags

        flags = WatchFlags(
            debounce, max_delay, resync, retry, metrics_port, metrics_host,
            None if local else lease, identity, lease_duration,
        )  # fmt: skip
        _watch(
            flags, local, namespace, selector, service, port, algo, kubeconfig, context,
            admin_token, epsilon, max_moves, rate, dry_run, as_json,
        )  # fmt: skip
        return
    if local:
        fleet = local_fleet(algo)
    else:
        from wsop.k8s.client import connect

        cluster = connect(kubeconfig, context)
        fleet = kubernetes_fleet(
            cluster,
            str(namespace),
            selector or DEFAULT_SELECTOR,
            algo or "maglev",
            admin_token or None,
            service,
            port,
        )
    progress = None if as_json or dry_run or not err_console.is_terminal else _progress()
    if progress is None:
        result = rebalance(fleet, epsilon, max_moves, rate, dry_run)
    else:
        with progress:
            task = progress.add_task("moving", total=None)

            def report(done: int, total: int, move: Any, error: str | None) -> None:
                progress.update(task, completed=done, total=total)

            result = rebalance(fleet, epsilon, max_moves, rate, dry_run, report)
    payload = result.to_json()
    emit(payload, as_json, lambda console: _render(console, payload))
    run = result.execution
    if run is not None and run.aborted:
        err_console.print(f"[bold red]error:[/] {run.aborted}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


WATCH_MAX_MOVES = 500
"""--watch's move budget per run when --max-moves is not given: a run stays short (10 s at
the default rate), so a membership change during it is acted on soon."""


def _watch(
    flags: Any,
    local: bool,
    namespace: str | None,
    selector: str | None,
    service: str | None,
    port: int | None,
    algo: str | None,
    kubeconfig: Path | None,
    context: str | None,
    admin_token: str | None,
    epsilon: float,
    max_moves: int | None,
    rate: float,
    dry_run: bool,
    as_json: bool,
) -> None:
    from wsop.cli.rebalance_watch import check, default_identity, run_watch
    from wsop.k8s.lease import LeaseElector, NoElection
    from wsop.k8s.operator import WatchConfig
    from wsop.k8s.rebalance import kubernetes_fleet, local_fleet
    from wsop.k8s.watch import MembersFilePoll, SliceWatch

    check(flags)
    config = WatchConfig(
        epsilon=epsilon,
        max_moves=WATCH_MAX_MOVES if max_moves is None else max_moves,
        rate=rate,
        debounce=flags.debounce,
        max_delay=max(flags.max_delay, flags.debounce),
        resync=flags.resync,
        retry=flags.retry,
        dry_run=dry_run,
    )
    if local:
        from wsop.local.stack_file import members_path

        path = members_path()
        run_watch(
            lambda: local_fleet(algo),
            lambda notify: MembersFilePoll(path, notify),
            NoElection(),
            config,
            flags,
            f"the local stack ({path})",
            as_json,
        )
        return
    from wsop.k8s.client import connect
    from wsop.k8s.manifests import SIDECAR_SERVICE

    cluster = connect(kubeconfig, context)
    ns, svc = str(namespace), service or SIDECAR_SERVICE
    sel = selector or DEFAULT_SELECTOR
    elector = LeaseElector(
        cluster, ns, flags.lease, flags.identity or default_identity(), flags.lease_duration
    )
    run_watch(
        lambda: kubernetes_fleet(
            cluster, ns, sel, algo or "maglev", admin_token or None, svc, port
        ),
        lambda notify: SliceWatch(cluster, ns, svc, notify),
        elector,
        config,
        flags,
        f"namespace {ns!r}, Service {svc!r} ({cluster.describe()})",
        as_json,
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=not os.environ.get("WSOP_KEEP_PROGRESS"),
    )


def _render(console: Console, p: dict[str, Any]) -> None:
    loads = titled_table(f"rebalance {p['where']}")
    members = set(p["members"])
    names = sorted(set(p["loads_before"]) | set(p["loads_after"]))
    gone = any(name not in members for name in names)  # the note column only when needed
    for column in ("member", "before", "after", *(["note"] if gone else [])):
        loads.add_column(column, justify="right" if column in ("before", "after") else "left")
    for name in names:
        row = [name, str(p["loads_before"].get(name, 0)), str(p["loads_after"].get(name, 0))]
        if gone:
            row.append("" if name in members else "[yellow]gone[/]")
        loads.add_row(*row)
    console.print(loads)
    if p["matrix"]:
        matrix = titled_table("moves (from → to)")
        for column in ("from", "to", "users", "connections"):
            matrix.add_column(
                column, justify="right" if column in ("users", "connections") else "left"
            )
        for cell in p["matrix"]:
            matrix.add_row(cell["from"], cell["to"], str(cell["moves"]), str(cell["connections"]))
        console.print(matrix)
    verb = "would move" if p["dry_run"] else "moved"
    done = p["moves"] if p["dry_run"] else p["moved"]
    console.print(
        f"max/mean {p['before']} → {p['after']} (ε {p['epsilon']}, capacity {p['capacity']}) · "
        f"{verb} {done}/{p['moves']} users"
        + (f" · {p['dropped']} more over --max-moves" if p["dropped"] else ""),
        highlight=False,
    )
    if p.get("observed_after") is not None:
        unconfirmed = p.get("unconfirmed") or 0
        console.print(
            f"checked afterwards: max/mean {p['observed_after']}"
            + (
                f" · [red]{unconfirmed} move(s) did not happen[/]"
                if unconfirmed
                else " · all moves confirmed"
            ),
            highlight=False,
        )
    for item in p["not_ready"]:
        console.print(f"[yellow]not ready[/] {item['name']}: {item['reason']}", highlight=False)
    for item in p["skipped_pods"]:
        console.print(f"[red]skipped[/] {item['name']}: {item['reason']}", highlight=False)
    for error in p["errors"][:10]:
        console.print(
            f"[red]failed[/] {error['tenant']}/{error['user']} {error['from']} → {error['to']}: "
            f"{error['error']}",
            highlight=False,
        )
    if len(p["errors"]) > 10:
        console.print(f"… and {len(p['errors']) - 10} more errors (see --json)")
