"""`wsop seed synthetic|load`: write tenant bitmaps, staged then swapped per tenant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wsop.acl import csvload, seed, synthetic
from wsop.acl.dataset import TenantData
from wsop.cli.app import new_app
from wsop.cli.options import JsonOpt, MaxUsersOpt, RedisOpt, max_users_or_default, tenant_store
from wsop.cli.output import emit, err_console, titled_table

app = new_app("Write tenant access bitmaps (staged, then swapped in atomically per tenant).")

ReplaceOpt = Annotated[
    bool, typer.Option("--replace", help="Drop the tenant's teams that this seed does not write.")
]


def _progress(as_json: bool) -> Progress:
    return Progress(
        TextColumn("[bold]seeding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tenants"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json or not err_console.is_terminal,  # a pipe would get a stray "\n"
    )


def _render(result: seed.SeedResult):
    def render(console: Console) -> None:
        table = titled_table("seeded")
        for col in ("tenants", "teams", "memberships", "online", "bytes", "seconds"):
            table.add_column(col, justify="right")
        row = result.to_json()
        table.add_row(*(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in row))
        console.print(table)

    return render


def _run(tenants, total: int, url: str | None, replace: bool, as_json: bool) -> None:
    store = tenant_store(url)
    with _progress(as_json) as progress:
        task = progress.add_task("seed", total=total)

        def advance(_: TenantData) -> None:
            progress.advance(task)

        result = seed.seed(store, tenants, replace, on_tenant=advance)
    emit(result.to_json(), as_json, _render(result))


@app.command("synthetic")
def synthetic_cmd(
    tenants: Annotated[int, typer.Option("--tenants", help="Number of tenants (t0, t1, …).")] = 1,
    users: Annotated[int, typer.Option("--users", help="Users per tenant (ids 0..U-1).")] = 10_000,
    teams: Annotated[int, typer.Option("--teams", help="Teams per tenant (team-0, …).")] = 20,
    team_size: Annotated[int, typer.Option("--team-size", help="Mean members per team.")] = 500,
    online: Annotated[float, typer.Option("--online", help="Fraction of users online.")] = 0.2,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed (deterministic).")] = 0,
    replace: ReplaceOpt = False,
    max_users: MaxUsersOpt = None,
    redis_url: RedisOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate random tenants in memory (numpy) and write one SET per bitmap."""
    spec = synthetic.SyntheticSpec(tenants, users, teams, team_size, online, seed_value)
    spec.validate(max_users_or_default(max_users))
    _run(synthetic.generate(spec), tenants, redis_url, replace, as_json)


@app.command("load")
def load_cmd(
    members: Annotated[Path, typer.Argument(help="CSV with header tenant,team,user.")],
    online: Annotated[
        Path | None, typer.Option("--online", metavar="FILE", help="CSV with header tenant,user.")
    ] = None,
    string_ids: Annotated[
        bool,
        typer.Option("--string-ids", help="User ids are strings (UUIDs) mapped to bit indices."),
    ] = False,
    replace: ReplaceOpt = False,
    max_users: MaxUsersOpt = None,
    redis_url: RedisOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load memberships (and optionally presence) from CSV; all rows are checked first."""
    limit = max_users_or_default(max_users)
    parsed = csvload.parse(members, online, string_ids=string_ids, max_users=limit)
    store = tenant_store(redis_url)
    tenants = (
        seed.from_parsed(store, name, data, string_ids, limit) for name, data in parsed.items()
    )
    _run(tenants, len(parsed), redis_url, replace, as_json)
