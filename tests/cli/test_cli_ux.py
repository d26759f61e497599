"""What a person meets at a terminal or in a pipe: tokens for the default stack without
hunting for the secret, output that never wraps in a pipe, tables without phantom
columns."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import ROOT, run_wsop
from wsop.auth import verify_token
from wsop.local.redis_binary import free_port

STANDIN = shlex.join([sys.executable, str(ROOT / "tests" / "standin_sidecar.py")])
NO_SECRET = {"WSOP_SECRET": "", "WSOP_SIDECAR_CMD": STANDIN}


@pytest.fixture
def stack_down() -> Iterator[None]:
    yield
    if (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists():
        run_wsop("down")


def up(redis_url: str, *extra: str) -> tuple[dict, str]:
    done = run_wsop(
        "up", "--detach", "--sidecars", "1", "--port", str(free_port()), "--redis", redis_url,
        *extra, env=NO_SECRET,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads((Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").read_text())
    return record, done.stdout


def test_token_for_the_default_stack_needs_no_secret_hunt(redis_url: str, stack_down) -> None:
    record, out = up(redis_url)
    # `wsop up` says how to get in, the command whole on one line
    assert "  wsop token --tenant acme --user 1\n" in out
    assert f"{record['lb']['url']}/ws?token=TOKEN" in out
    minted = run_wsop("token", "--tenant", "acme", "--user", "7", env=NO_SECRET)
    assert minted.returncode == 0, minted.stderr
    identity = verify_token(record["secret"], minted.stdout.strip())
    assert (identity.tenant, identity.user) == ("acme", 7)
    assert "using the secret of the local stack" in minted.stderr
    # an explicit secret still wins, silently
    mine = run_wsop("token", "--tenant", "acme", "--user", "7", env={"WSOP_SECRET": "x" * 32})
    assert mine.returncode == 0 and mine.stderr == ""
    assert verify_token("x" * 32, mine.stdout.strip()).user == 7


def test_token_without_any_secret_says_every_way(redis_url: str, stack_down) -> None:
    nothing = run_wsop("token", "--tenant", "acme", "--user", "1", env={"WSOP_SECRET": ""})
    assert nothing.returncode == 2
    assert nothing.stderr.strip().splitlines() == [
        "error: no JWT secret: set WSOP_SECRET or pass --secret (or start a local stack with "
        "`wsop up`)"
    ]
    _, out = up(redis_url, "--insecure")
    assert "?tenant=TENANT&user=USER (no token: --insecure)" in out
    insecure = run_wsop("token", "--tenant", "acme", "--user", "1", env={"WSOP_SECRET": ""})
    assert insecure.returncode == 2 and "runs --insecure" in insecure.stderr


def test_a_pipe_gets_whole_lines(redis_url: str, tmp_path: Path) -> None:
    """Not a terminal: no wrapping at 80 columns (nor at stderr's terminal width)."""
    rows = "".join(f"acme,eng,{u}\n" for u in range(40))
    members = tmp_path / "members.csv"
    members.write_text("tenant,team,user\n" + rows)
    env = {"WSOP_REDIS_URL": redis_url}
    seeded = run_wsop("seed", "load", str(members), env=env)
    assert seeded.returncode == 0 and seeded.stdout.startswith("seeded\n")
    assert seeded.stderr == ""  # no progress bar's leftover newline: nothing at all
    out = run_wsop("resolve", "--tenant", "acme", "--team", "eng", "--all", env=env).stdout
    assert ", ".join(str(u) for u in range(40)) in out.splitlines()
    tenant = "a-tenant-name-longer-than-the-table-is-wide"
    out = run_wsop("ring", "locate", "--nodes", "a,b", "--tenant", tenant, "1").stdout
    assert out.splitlines()[0] == f"maglev: tenant '{tenant}'"
    assert not any(line != line.rstrip() for line in out.splitlines())


def render(function, *args) -> str:
    console = Console(width=120, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    function(console, *args)
    return console.export_text()


def test_rebalance_table_has_no_unnamed_column() -> None:
    from wsop.cli.rebalance import _render

    payload = {
        "where": "the local stack", "members": ["s0", "s1"], "loads_before": {"s0": 3, "s1": 1},
        "loads_after": {"s0": 2, "s1": 2}, "matrix": [], "dry_run": True, "moves": 1, "moved": 0,
        "before": 1.5, "after": 1.0, "epsilon": 0.25, "capacity": 3, "dropped": 0,
        "not_ready": [], "skipped_pods": [], "errors": [],
    }  # fmt: skip
    header = next(x for x in render(_render, payload).splitlines() if "member" in x)
    assert header.split("┃")[1:-1] == [" member ", " before ", " after "]
    payload["loads_before"]["s9"] = 4  # a member that left: now the note says so
    text = render(_render, payload)
    header = next(x for x in text.splitlines() if "member" in x)
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["member", "before", "after", "note"]
    assert "gone" in text
