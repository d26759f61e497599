"""`wsop ring` through Typer's CliRunner and as a real subprocess."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import run_wsop
from wsop.cli.main import app
from wsop.ring import build

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["ring", *args])


def test_show_json_keys_and_counts():
    result = invoke("show", "--nodes", "a=2,b,c", "--keys", "3000", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) >= {"algo", "nodes", "max_over_mean"}
    assert payload["algo"] == "maglev"
    assert sum(payload["nodes"].values()) == 3000
    assert payload["nodes"]["a"] > payload["nodes"]["b"]
    assert payload["max_over_mean"] >= 1.0


def test_show_human_table():
    result = invoke("show", "--nodes", "a,b,c", "--algo", "ring", "--keys", "1000")
    assert result.exit_code == 0, result.output
    assert "max/mean" in result.stdout and "█" in result.stdout


def test_show_bounded_respects_epsilon():
    result = invoke(
        "show",
        "--nodes",
        "a,b,c,d",
        "--algo",
        "bounded",
        "--base",
        "ring",
        "--epsilon",
        "0.01",
        "--keys",
        "4000",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert max(json.loads(result.stdout)["nodes"].values()) <= 1010


def test_locate_json_matches_library():
    result = invoke("locate", "--nodes", "x,y,z", "--tenant", "acme", "--json", "7", "bob")
    assert result.exit_code == 0, result.output
    placement = build("maglev", ["x", "y", "z"])
    assert json.loads(result.stdout)["owners"] == {
        "7": placement.owner(("acme", "7")),
        "bob": placement.owner(("acme", "bob")),
    }


def test_locate_default_tenant_is_default():
    result = invoke("locate", "--nodes", "x,y,z", "--algo", "rendezvous", "--json", "7")
    payload = json.loads(result.stdout)
    assert payload["tenant"] == "default"
    assert payload["owners"]["7"] == build("rendezvous", ["x", "y", "z"]).owner(("default", 7))


def test_diff_json_and_matrix():
    result = invoke(
        "diff",
        "--nodes",
        "a,b,c",
        "--to",
        "a,b,c,d",
        "--algo",
        "rendezvous",
        "--keys",
        "8000",
        "--json",
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ideal_fraction"] == pytest.approx(0.25)
    assert payload["moved"] == sum(n for row in payload["matrix"].values() for n in row.values())
    assert set(payload["matrix"]) <= {"a", "b", "c"}
    assert all(set(row) == {"d"} for row in payload["matrix"].values())
    assert payload["moved_fraction"] == pytest.approx(0.25, abs=0.03)


def test_diff_human_shows_matrix():
    result = invoke("diff", "--nodes", "a,b,c", "--to", "a,b", "--keys", "2000")
    assert result.exit_code == 0, result.output
    assert "from" in result.stdout and "ideal" in result.stdout


def test_every_command_has_help():
    for command in ("show", "locate", "diff"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "--nodes" in result.stdout and "--json" in result.stdout


def test_subprocess_show_json():
    result = run_wsop("ring", "show", "--nodes", "a,b", "--keys", "500", "--json")
    assert result.returncode == 0, result.stderr
    assert sum(json.loads(result.stdout)["nodes"].values()) == 500


BAD_INPUTS = [
    (["show", "--nodes", ""], "empty"),
    (["show", "--nodes", "a,b,a"], "duplicate"),
    (["show", "--nodes", "a=0,b"], "> 0"),
    (["show", "--nodes", "a=-2,b"], "> 0"),
    (["show", "--nodes", "a=heavy,b"], "not a number"),
    (["show", "--nodes", "a,b", "--algo", "nope"], "unknown algorithm"),
    (["show", "--nodes", "a,b", "--keys", "0"], "--keys must be an integer from 1 to 10,000,000"),
    (["diff", "--nodes", "a,b", "--to", "a,b,c", "--keys", "-5"], "--keys must be an integer"),
    (["diff", "--nodes", "a,b"], "--to"),
    (["locate", "--nodes", "a,b", "--algo", "bounded", "1"], "live loads"),
    (["show"], "no nodes"),
    # a sane ceiling: 300 M keys ate GBs
    (["show", "--nodes", "a,b", "--keys", "300000000"], "--keys must be an integer from 1"),
    (["diff", "--nodes", "a", "--to", "a,b", "--keys", "10000001"], "--keys must be an integer"),
    # what `wsop token` and `resolve` refuse, refused here too
    (["locate", "--nodes", "a,b", "--tenant", "a{b", "1"], "invalid tenant name 'a{b'"),
    (["locate", "--nodes", "a,b", "--tenant", "", "1"], "invalid tenant name ''"),
    (["locate", "--nodes", "a,b", "--", ""], "bad user id ''"),
    (["locate", "--nodes", "a,b", "--", "-1"], "bad user id '-1'"),
    (["locate", "--nodes", "a,b", "a\x01"], "bad user id 'a\\x01'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_in_process(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS[:7])
def test_bad_input_subprocess(args, message):
    result = run_wsop("ring", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr + result.stdout


def test_local_nodes_come_from_the_members_file(tmp_path, monkeypatch) -> None:
    import json as _json

    from typer.testing import CliRunner

    from wsop.cli.main import app

    monkeypatch.setenv("WSOP_STATE_DIR", str(tmp_path))
    runner = CliRunner()
    missing = runner.invoke(app, ["ring", "show", "--local"])
    assert missing.exit_code == 1 and "no local stack running" in missing.stderr
    doc = {
        "version": 1,
        "algo": "maglev",
        "insecure": True,
        "redis_url": "redis://x",
        "admin_token": "t",
        "lb": {"name": "lb", "url": "ws://127.0.0.1:1", "pid": 1},
        "sidecars": [
            {"name": "s0", "url": "ws://127.0.0.1:2", "pid": 2},
            {"name": "s1", "url": "ws://127.0.0.1:3", "pid": 3},
        ],
    }
    (tmp_path / "stack.json").write_text(_json.dumps(doc))
    shown = runner.invoke(app, ["ring", "show", "--local", "--keys", "1000", "--json"])
    assert shown.exit_code == 0, shown.stderr
    assert sorted(_json.loads(shown.stdout)["nodes"]) == ["s0", "s1"]
    both = runner.invoke(app, ["ring", "show", "--local", "--nodes", "a,b"])
    assert both.exit_code == 2
