"""`wsop loadtest`: locust profiles against the local stack or a target (docs/loadtest.md).

Thin: flags → `LoadPlan` → `wsop.load.runner.run` (locust in subprocesses, so this
process is never monkey-patched by gevent) → `summary` → table or `--json`. With
`--chaos`, a `Nemesis` thread injects the faults into the local stack meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from wsop.checks import check_history_backend
from wsop.cli.app import interrupt_on_sigterm
from wsop.cli.options import JsonOpt, RedisOpt
from wsop.cli.output import emit, err_console, titled_table
from wsop.errors import UsageError, WsopError
from wsop.load.failures import no_one_connected
from wsop.load.staging import staged_dir
from wsop.local.limits import check_sidecar_count


def _live(as_json: bool):
    """A status callback rendering one live line (terminal only), and its closer."""
    if as_json or not err_console.is_terminal:
        return None, lambda: None
    from rich.live import Live

    live = Live(console=err_console, transient=True, refresh_per_second=4)
    live.start()

    def show(point: dict[str, Any]) -> None:
        p95 = point.get("p95")
        live.update(
            f"[bold]{point['phase']}[/] t={point['t']:.0f}s users={point['users']} "
            f"rate={point['msgs_per_s']:.0f}/{point['target_rate']:.0f} msg/s "
            f"sent={point['sent']} delivered={point['delivered']} "
            f"[{'red' if point['lost'] else 'green'}]lost={point['lost']}[/] "
            + (f"[red]silent={point['silent_loss']}[/] " if point.get("silent_loss") else "")
            + f"reconnects={point.get('reconnects', 0)} "
            f"p95={'-' if p95 is None else p95} ms"
        )

    return show, live.stop


def _render(result: dict[str, Any]) -> Any:
    def render(console: Console) -> None:
        table = titled_table(f"wsop loadtest · {result['profile']}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        lat = result["latency_ms"]
        rows = [
            ("target", result["target"]),
            ("connections (ready)", f"{result['connections']} ({result['ready']})"),
            ("workers", result["workers"]),
            ("duration s", result["duration_s"]),
            ("target rate msg/s", f"{result['target_rate']:g}"),
            ("sent (direct / team)", f"{result['sent']} ({result['direct']} / {result['team']})"),
            ("achieved msg/s", f"{result['msgs_per_s']} ({result['rate_ratio']:.1%} of plan)"),
            ("generator CPU (µs/msg)", _generator(result)),
            ("expected deliveries", result["expected_deliveries"]),
            ("delivered", result["delivered"]),
            ("lost", result["lost"]),
            ("duplicates", result["duplicates"]),
            ("deliveries/s", result["deliveries_per_s"]),
            ("latency p50/p95/p99 ms", f"{lat['p50']} / {lat['p95']} / {lat['p99']}"),
        ]
        classes = ("lost_disconnected", "lost_unacked", "reported_undelivered", "silent_loss")
        rows += [(k, result[k]) for k in classes if result[k] or k == "silent_loss"]
        if result["silent_late"]:
            rows.append(("silent, arrived after --grace", result["silent_late"]))
        rows.append(("cross_tenant", result["cross_tenant"]))
        if result["refused"]:
            codes = ", ".join(f"{k} {v}" for k, v in sorted(result["refused_codes"].items()))
            rows.append(("refused", f"{result['refused']} ({codes})"))
        if result["reconnects"] or result["faults"]:
            ms = result["reconnect_ms"]
            p50, p99 = (ms[k] if ms[k] is not None else "-" for k in ("p50", "p99"))
            rows.append(("reconnects (p50/p99 ms)", f"{result['reconnects']} ({p50} / {p99})"))
        side = ("late", "surplus", "unexpected", "errors", "disconnects", "not_back",
                "acks_missing")  # fmt: skip
        rows += [(k, result[k]) for k in side if result[k]]
        if result["connect_errors"]:
            top = max(result["connect_errors"].items(), key=lambda item: item[1])
            rows.append(("connect failures", f"{result['connect_failures']} (most: {top[0]})"))
        bad = ("lost", "duplicates", "silent_loss", "cross_tenant", "not_back")
        for key, value in rows:
            style = "red" if key in bad and value else ""
            table.add_row(key, f"[{style}]{value}[/]" if style else str(value))
        console.print(table)
        if result["faults"]:
            console.print(_faults_table(result))
            console.print(_windows_table(result))
        if result.get("report_dir"):
            console.print(f"report: {result['report_dir']}", highlight=False)

    return render


def _generator(result: dict[str, Any]) -> str:
    """Each worker's CPU (cores) over the run phase, µs per message, and whether the
    generator was the limit (then the stack's numbers say little)."""
    cores = " ".join(f"{c:.2f}" for c in result["generator_cpu"].values()) or "-"
    text = f"{cores} ({result['generator_us_per_msg']})"
    return text + (" [red]the limit: add --workers[/]" if result["generator_limited"] else "")


def _faults_table(result: dict[str, Any]) -> Table:
    table = titled_table("faults")
    for column in ("fault", "planned s", "started s", "took s", "whole s", "result", "detail"):
        table.add_column(column, justify="left" if column in ("fault", "detail") else "right")
    for f in result["faults"]:
        ok = "[green]ok[/]" if f["ok"] else "[red]FAILED[/]"
        table.add_row(
            f["label"], str(f["planned_s"]), str(f["started_s"]), str(f["duration_s"]),
            str(f.get("recovered_s")), ok, str(f["detail"]),
        )  # fmt: skip
    return table


def _windows_table(result: dict[str, Any]) -> Table:
    """One row per window: the fault that opened it, then what happened to the messages
    sent in it (deliveries by class) and the reconnects of the drops in it."""
    table = titled_table("windows (a message counts in the window of its send time)")
    columns = {
        "window": None, "sent": "sent", "expect": "expected", "deliv": "delivered",
        "silent": "silent_loss", "report": "reported_undelivered",
        "discon": "lost_disconnected", "unack": "lost_unacked", "refuse": "refused",
        "dup": "duplicates", "xten": "cross_tenant", "recon": "reconnects",
    }  # fmt: skip
    for column in (*columns, "p99 ms"):
        table.add_column(column, justify="left" if column == "window" else "right")
    for w in result["windows"]:
        cells = [w["fault"] or f"start@{w['from_s']:g}s"]
        for key in list(columns.values())[1:]:
            text = str(w[key])
            if key == "silent_loss" and w.get("silent_late"):
                text += f" ({w['silent_late']} late)"
            bad = key in ("silent_loss", "cross_tenant") and w[key]
            cells.append(f"[red]{text}[/]" if bad else text)
        cells.append(str(w["reconnect_ms"]["p99"] or "-"))
        table.add_row(*cells)
    return table


def loadtest_cmd(
    local: Annotated[bool, typer.Option("--local", help="Use (or start) the local stack.")] = False,
    target: Annotated[
        str | None, typer.Option("--target", help="The LB's URL, ws://HOST:PORT.")
    ] = None,
    profile: Annotated[
        str, typer.Option("--profile", help="smoke, ramp, 30k, spike or soak.")
    ] = "smoke",
    rate: Annotated[float | None, typer.Option("--rate", help="Peak msg/s.")] = None,
    connections: Annotated[int | None, typer.Option("--connections", help="WebSockets.")] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="Seconds.")] = None,
    team_share: Annotated[
        float | None, typer.Option("--team-share", help="Fraction of team messages.")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="Locust worker processes (0: one process).")
    ] = 0,
    report: Annotated[
        Path | None,
        typer.Option("--report", metavar="DIR", help="Write HTML, CSV and a PNG plot here."),
    ] = None,
    allow_loss: Annotated[bool, typer.Option("--allow-loss", help="Lost ≠ failure.")] = False,
    min_rate_ratio: Annotated[
        float, typer.Option("--min-rate-ratio", help="Fail below this share of the plan.")
    ] = 0.9,
    grace: Annotated[float, typer.Option("--grace", help="Seconds to wait for stragglers.")] = 3.0,
    sidecars: Annotated[
        int, typer.Option("--sidecars", help="Sidecars if --local starts a stack.")
    ] = 2,
    history: Annotated[
        str,
        typer.Option(
            "--history",
            help="The sidecars' --history (memory, redis or off) if --local starts a stack.",
        ),
    ] = "memory",
    master: Annotated[bool, typer.Option("--master", help="Run only the master.")] = False,
    worker: Annotated[bool, typer.Option("--worker", help="Run only a worker.")] = False,
    master_host: Annotated[str, typer.Option("--master-host", help="Master to join.")] = "",
    master_port: Annotated[int, typer.Option("--master-port", help="Master's port.")] = 5557,
    master_bind: Annotated[
        str, typer.Option("--master-bind", help="Master's listen address.")
    ] = "0.0.0.0",
    chaos: Annotated[
        str | None,
        typer.Option(
            "--chaos",
            help="Faults to inject (needs --local), e.g. "
            "kill-sidecar@10s,restart-redis@20s,scale=4@30s,rebalance@35s,drain@45s.",
        ),
    ] = None,
    redis_url: RedisOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Drive the stack with locust at a profile's rates and account for every delivery."""
    from wsop.load import localstack, runner
    from wsop.load import report as reporting
    from wsop.load.chaos import parse_spec
    from wsop.load.profiles import make_plan

    interrupt_on_sigterm()  # a stack, locust and a staged report to clean up, as on Ctrl-C
    if worker:
        if not master_host:
            raise UsageError("--worker needs --master-host")
        raise typer.Exit(runner.run_worker(master_host, master_port, {}))
    if local == (target is not None):
        raise UsageError("pass exactly one of --local or --target URL")
    check_history_backend(history)
    check_sidecar_count(sidecars)  # before anything starts (as `wsop up` does)
    if not 0 < min_rate_ratio <= 1:
        raise UsageError(f"--min-rate-ratio is a fraction in (0, 1], got {min_rate_ratio}")
    if master:
        expected_workers = workers or 1
    else:
        runner.check_workers(workers)
        expected_workers = max(1, workers)
    plan = make_plan(profile, rate, connections, duration, team_share, expected_workers, grace)
    faults = []
    if chaos is not None:
        if not local or master:
            raise UsageError("--chaos needs --local: the load test must control the stack")
        faults = parse_spec(chaos, plan.duration)
        plan = replace(plan, extra={**plan.extra, "chaos": [f.to_json() for f in faults]})
    if target is not None:
        target = runner.normalize_target(target)
        runner.check_reachable(target)

    stack = None
    nemesis = None
    records: list[dict[str, Any]] = []
    scratch: Path | None = None
    env: dict[str, str] = {}
    if local:
        stack = localstack.ensure(sidecars, redis_url, history)
        target, redis_url = stack.url, stack.redis_url
        if stack.secret:
            env["WSOP_SECRET"] = stack.secret
    # --report: written beside DIR and moved into place once complete (wsop.load.staging)
    staging = staged_dir(report) if report is not None else contextlib.nullcontext(None)
    with staging as stage:
        try:
            if local or redis_url:
                localstack.seed(plan, redis_url)
            elif not as_json:
                err_console.print(f"assuming the target is seeded: {plan.seed_command()}")
            work = stage or Path(tempfile.mkdtemp(prefix="wsop-loadtest-"))
            scratch = None if stage else work  # removed once read, unless an error names it
            if faults:
                from wsop.load.nemesis import Nemesis

                assert stack is not None
                if any(f.action == "restart-redis" for f in faults):
                    from wsop.local.faults import check_restartable

                    check_restartable(stack.redis_url)
                (work / "status.json").unlink(missing_ok=True)
                nemesis = Nemesis(faults, work / "status.json", plan, stack.redis_url)
                nemesis.start()
            show, close = _live(as_json)
            assert target is not None
            spec = runner.RunSpec(
                target=target,
                plan=plan,
                workers=0 if master else workers,
                master_only=master,
                master_bind=master_bind if master else "127.0.0.1",
                master_port=master_port if master else _free_port(workers),
                report_dir=stage,
                work_dir=work,
                env=env,
                on_status=show,
            )
            try:
                results = runner.run(spec)
            except WsopError as exc:
                if scratch is not None and str(scratch) not in str(exc):
                    shutil.rmtree(scratch, ignore_errors=True)
                raise
            finally:
                close()
        finally:
            if nemesis is not None:
                records = nemesis.stop()  # before the stack goes: a fault may be mid-way
            if stack is not None:
                stack.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        result = reporting.summary(results, target, records)
        if report is not None and stage is not None:
            reporting.plot(results, stage / "loadtest.png", records)
            result["report_dir"], result["plot"] = str(report), str(report / "loadtest.png")
            reporting.annotate_html(stage / "report.html", result)
    emit(result, as_json, _render(result))
    reasons = reporting.verdict(result, allow_loss, min_rate_ratio, chaos=bool(faults))
    has_secret = bool(env.get("WSOP_SECRET") or os.environ.get("WSOP_SECRET"))
    stuck = no_one_connected(result, f"{target}/ws", has_secret)
    if stuck is not None:
        reasons = [stuck]  # nothing sent, nothing delivered: that is the one cause
    if reasons:
        raise WsopError("; ".join(reasons))


def _free_port(workers: int) -> int:
    if not workers:
        return 0
    from wsop.local.redis_binary import free_port

    return free_port()
