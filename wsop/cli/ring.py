"""`wsop ring`: see and test the placement the load balancer and sidecars share.

Thin by design: flags are parsed here, `wsop.ring` places the keys, and one result
object feeds both the rich table and `--json`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from wsop.checks import check_int_range
from wsop.cli.app import new_app
from wsop.cli.options import JsonOpt
from wsop.cli.output import emit, titled_table
from wsop.errors import UsageError
from wsop.names import canonical_user_id, check_tenant
from wsop.ring import (
    BOUNDED,
    DEFAULT_ALGORITHM,
    DEFAULT_EPSILON,
    DiffReport,
    LoadReport,
    Membership,
    Placement,
    algorithm_names,
    build,
    diff_report,
    encode_key,
    load_report,
    place,
    resolve_members,
    synthetic_keys,
)

app = new_app(
    "Hash ring: which sidecar owns a user's connection, and what a membership change "
    "would move. Placement is computed locally from the membership alone, exactly as the "
    "load balancer and every sidecar compute it."
)

DEFAULT_KEYS = 100_000
MAX_KEYS = 10_000_000
"""`--keys` ceiling: ten million keys take ~0.8 GB and ~3 s to place (measured: 3 nodes),
so memory grows ~75 bytes a key: 300 million would want ~23 GB, for a balance figure
10 M already gives to 4 digits."""
DEFAULT_TENANT = "default"
BAR_WIDTH = 30

NodesOpt = Annotated[
    str | None,
    typer.Option(
        "--nodes",
        help="Members, comma-separated, each with an optional weight: a=2,b,c "
        "(weights are relative, default 1, must be > 0).",
        show_default=False,
    ),
]
AlgoOpt = Annotated[
    str,
    typer.Option(
        "--algo",
        help=f"Placement algorithm: {', '.join(algorithm_names())}.",
    ),
]
KeysOpt = Annotated[
    int,
    typer.Option(
        "--keys",
        help=f"How many synthetic keys to place (tenant 't0', users 0..N-1; at most {MAX_KEYS:,}).",
    ),
]
EpsilonOpt = Annotated[
    float,
    typer.Option(
        "--epsilon",
        help="With --algo bounded: no node gets more than ceil((1+epsilon) x mean) keys.",
    ),
]
BaseOpt = Annotated[
    str,
    typer.Option("--base", help="With --algo bounded: the placement whose preference it walks."),
]


def _check_keys(keys: int) -> int:
    return check_int_range(keys, "--keys", 1, MAX_KEYS)


def _check_users(tenant: str, users: list[str]) -> None:
    """The tenant and user ids `wsop token` and `resolve` accept, and no other: a
    placement for `a{b` or an empty id answers a question no client can ask."""
    check_tenant(tenant)
    for user in users:
        if canonical_user_id(user, None) is None:
            raise UsageError(
                f"bad user id {user!r}: a non-negative integer or a printable string ≤ 256 chars"
            )


def _bounded_opts(algo: str, base: str, epsilon: float) -> dict[str, object]:
    return {"base": base, "epsilon": epsilon} if algo == BOUNDED else {}


def _bar(value: int, top: int) -> str:
    return "█" * (round(BAR_WIDTH * value / top) if top else 0)


LocalOpt = Annotated[
    bool,
    typer.Option("--local", help="Use the sidecars of the local stack (`wsop up`) as nodes."),
]


def _local_members() -> list[str]:
    """The sidecar names of the running local stack (its members file)."""
    from wsop.local import stack_file

    return sorted(s.name for s in stack_file.require().sidecars)


def _members(nodes: str | None, local: bool) -> Membership:
    return resolve_members(nodes, _local_members if local else None)


@app.command()
def show(
    nodes: NodesOpt = None,
    local: LocalOpt = False,
    algo: AlgoOpt = DEFAULT_ALGORITHM,
    keys: KeysOpt = DEFAULT_KEYS,
    base: BaseOpt = DEFAULT_ALGORITHM,
    epsilon: EpsilonOpt = DEFAULT_EPSILON,
    as_json: JsonOpt = False,
) -> None:
    """Place KEYS synthetic keys and show each node's load and the max/mean balance.

    JSON: {"algo", "nodes": {name: keys}, "max_over_mean"} — max_over_mean is the largest
    load over its fair share (plain max/mean when unweighted).
    """
    membership = _members(nodes, local)
    encoded = synthetic_keys(_check_keys(keys))
    owners = place(algo, membership, encoded, **_bounded_opts(algo, base, epsilon))
    report = load_report(algo, membership, owners)
    emit(report.to_json(), as_json, lambda console: _render_show(console, report, membership))


def _render_show(console: Console, report: LoadReport, membership: Membership) -> None:
    total = sum(report.loads.values())
    top = max(report.loads.values())
    table = titled_table(f"{report.algo}: {total} keys on {len(membership)} nodes")
    for column, justify in (("node", "left"), ("weight", "right"), ("keys", "right")):
        table.add_column(column, justify=justify)
    table.add_column("share", justify="right")
    table.add_column("load", justify="left")
    for member, weight in zip(membership.members, membership.weights, strict=True):
        load = report.loads[member]
        table.add_row(member, f"{weight:g}", str(load), f"{load / total:.2%}", _bar(load, top))
    console.print(table)
    console.print(f"max/mean: [bold]{report.max_over_mean:.4f}[/]")


@app.command()
def locate(
    users: Annotated[list[str], typer.Argument(help="User ids to place.", show_default=False)],
    nodes: NodesOpt = None,
    local: LocalOpt = False,
    algo: AlgoOpt = DEFAULT_ALGORITHM,
    tenant: Annotated[
        str, typer.Option("--tenant", help="Tenant of the users (the key is (tenant, user)).")
    ] = DEFAULT_TENANT,
    as_json: JsonOpt = False,
) -> None:
    """Print the node that owns each USER's connection.

    JSON: {"algo", "tenant", "owners": {user: node}}. The tenant defaults to "default",
    so pass --tenant for real tenants: the same user id lands elsewhere in another tenant.
    """
    if algo == BOUNDED:
        raise UsageError(
            "bounded loads depend on live loads; locate shows a pure placement "
            f"(use --algo {' / '.join(algorithm_names()[:-1])})"
        )
    _check_users(tenant, users)
    membership = _members(nodes, local)
    placement = build(algo, membership)
    assert isinstance(placement, Placement)
    owners = {user: placement.owner_of(encode_key((tenant, user))) for user in users}
    payload = {"algo": algo, "tenant": tenant, "owners": owners}

    def render(console: Console) -> None:
        table = titled_table(f"{algo}: tenant {tenant!r}")
        table.add_column("user")
        table.add_column("node")
        for user, node in owners.items():
            table.add_row(user, node)
        console.print(table)

    emit(payload, as_json, render)


@app.command()
def diff(
    nodes: NodesOpt = None,
    local: Annotated[
        bool, typer.Option("--local", help="Start from the local stack's sidecars.")
    ] = False,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="The new membership, same syntax as --nodes.", show_default=False
        ),
    ] = None,
    algo: AlgoOpt = DEFAULT_ALGORITHM,
    keys: KeysOpt = DEFAULT_KEYS,
    base: BaseOpt = DEFAULT_ALGORITHM,
    epsilon: EpsilonOpt = DEFAULT_EPSILON,
    as_json: JsonOpt = False,
) -> None:
    """Show which keys would change owner going from --nodes to --to.

    JSON: {"moved", "moved_fraction", "ideal_fraction", "matrix": {from: {to: keys}}, …}.
    ideal_fraction is what a name-keyed placement must move: the removed nodes' share plus
    the added nodes' share (plus survivors' weight shifts): 1/(n+1) for one node added to
    n, 1/n for one removed, 2/n for one replaced.
    """
    if to is None:
        raise UsageError("give the new membership with --to a,b,c")
    before = _members(nodes, local)
    after = resolve_members(to)
    encoded = synthetic_keys(_check_keys(keys))
    opts = _bounded_opts(algo, base, epsilon)
    report = diff_report(
        algo,
        before,
        after,
        place(algo, before, encoded, **opts),
        place(algo, after, encoded, **opts),
    )
    emit(report.to_json(), as_json, lambda console: _render_diff(console, report))


def _render_diff(console: Console, report: DiffReport) -> None:
    ratio = report.moved_fraction / report.ideal_fraction if report.ideal_fraction else None
    console.print(
        f"{report.algo}: [bold]{report.moved}[/] of {report.keys} keys move "
        f"({report.moved_fraction:.2%}; ideal {report.ideal_fraction:.2%}"
        + (f", {ratio:.2f}x ideal)" if ratio is not None else ")")
    )
    if not report.matrix:
        return
    sources = [m for m in report.before if m in report.matrix]
    targets = sorted({t for row in report.matrix.values() for t in row}, key=report.after.index)
    table = titled_table("moved keys: from (rows) → to (columns)")
    table.add_column("from \\ to")
    for target in targets:
        table.add_column(target, justify="right")
    for source in sources:
        row = report.matrix[source]
        table.add_row(source, *(str(row[t]) if t in row else "" for t in targets))
    console.print(table)
