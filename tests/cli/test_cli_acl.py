"""`wsop seed`, `resolve`, `online` and `redis` through typer's runner and as real processes.

Every bad input must give one clear line on stderr, exit 2 (usage) or 1 (runtime), and
never a traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from tests.conftest import run_wsop
from wsop.acl import keys
from wsop.cli.main import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_clean_error(result, code: int, needle: str) -> None:
    stderr = result.stderr
    assert result.exit_code == code, (result.stdout, stderr)
    assert needle in stderr
    assert "Traceback" not in stderr + result.stdout
    assert len(stderr.strip().splitlines()) == 1, stderr


@pytest.fixture
def members(tmp_path: Path) -> Path:
    return write(
        tmp_path / "members.csv",
        "tenant,team,user\nacme,eng,1\nacme,eng,2\nacme,ops,3\nglobex,eng,1\n",
    )


@pytest.fixture
def online_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "online.csv", "tenant,user\nacme,2\nacme,3\nglobex,1\n")


def test_seed_load_and_resolve_json(redis_url: str, members: Path, online_csv: Path) -> None:
    res = invoke(
        "seed", "load", str(members), "--online", str(online_csv), "--redis", redis_url, "--json"
    )
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["tenants"] == 2 and summary["teams"] == 3
    assert summary["memberships"] == 4 and summary["online"] == 3
    assert set(summary) >= {"tenants", "teams", "memberships", "online", "bytes", "seconds"}

    res = invoke(
        "resolve",
        "--tenant",
        "acme",
        "--team",
        "eng",
        "--team",
        "ops",
        "--redis",
        redis_url,
        "--json",
    )
    out = json.loads(res.stdout)
    assert out["recipients"] == [2, 3] and out["count"] == 2
    assert set(out) >= {"tenant", "teams", "recipients", "count", "elapsed_ms"}

    res = invoke(
        "resolve",
        "--tenant",
        "acme",
        "--team",
        "eng",
        "--all",
        "--count",
        "--redis",
        redis_url,
        "--json",
    )
    out = json.loads(res.stdout)
    assert out["count"] == 2 and "recipients" not in out


def test_online_add_remove(redis_url: str, members: Path) -> None:
    assert invoke("seed", "load", str(members), "--redis", redis_url).exit_code == 0
    res = invoke("online", "add", "--tenant", "acme", "1", "2", "--redis", redis_url, "--json")
    assert json.loads(res.stdout) == {"tenant": "acme", "changed": 2, "requested": 2}
    res = invoke("online", "remove", "--tenant", "acme", "2", "--redis", redis_url, "--json")
    assert json.loads(res.stdout)["changed"] == 1
    res = invoke("resolve", "--tenant", "acme", "--team", "eng", "--redis", redis_url, "--json")
    assert json.loads(res.stdout)["recipients"] == [1]


def test_online_add_of_a_string_id_names_a_real_flag(redis_url: str, members: Path) -> None:
    """`online add` has no --string-ids: the hint said "use --string-ids"."""
    assert invoke("seed", "load", str(members), "--redis", redis_url).exit_code == 0
    res = invoke("online", "add", "--tenant", "acme", "abc", "--redis", redis_url)
    assert_clean_error(res, 2, "seeded with `wsop seed load --string-ids`")


def test_seed_synthetic_json(redis_url: str) -> None:
    res = invoke(
        "seed",
        "synthetic",
        "--tenants",
        "2",
        "--users",
        "1000",
        "--teams",
        "4",
        "--team-size",
        "100",
        "--online",
        "0.5",
        "--seed",
        "3",
        "--redis",
        redis_url,
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["tenants"] == 2 and out["teams"] == 8 and 0 < out["online"] < 2000


@pytest.mark.parametrize(
    ("csv_text", "needle"),
    [
        ("tenant,team,user\nacme,eng,1\nacme,eng\n", "members.csv:3: expected 3 fields"),
        (
            "tenant,team,user\nacme,eng,1\nacme,eng,abc\n",
            "members.csv:3: user id 'abc' is not an integer",
        ),
        ("tenant,team,user\nacme,eng,-4\n", "members.csv:2: user id -4 is negative"),
        ("tenant,team,user\nacme,eng,16777216\n", "members.csv:2: user id 16777216 is too large"),
        ("tenant,team,user\nac{me,eng,1\n", "members.csv:2: invalid tenant name"),
        ("tenant,user\nacme,1\n", "members.csv:1: header is"),
        ("", "members.csv: empty file"),
    ],
)
def test_seed_load_bad_rows_write_nothing(
    redis_url: str, r: redis.Redis, tmp_path: Path, csv_text: str, needle: str
) -> None:
    path = write(tmp_path / "members.csv", csv_text)
    res = invoke("seed", "load", str(path), "--redis", redis_url)
    assert_clean_error(res, 2, needle)
    assert r.dbsize() == 0


def test_csv_saved_by_a_spreadsheet_with_a_bom_loads(redis_url: str, tmp_path: Path) -> None:
    """ "CSV UTF-8" from a spreadsheet starts with U+FEFF; it is not part of the header."""
    members = tmp_path / "members.csv"
    members.write_bytes("tenant,team,user\r\nacme,eng,1\r\nacme,eng,2\r\n".encode("utf-8-sig"))
    online = tmp_path / "online.csv"
    online.write_bytes("tenant,user\nacme,2\n".encode("utf-8-sig"))
    res = invoke(
        "seed", "load", str(members), "--online", str(online), "--redis", redis_url, "--json"
    )
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["memberships"] == 2
    res = invoke("resolve", "--tenant", "acme", "--team", "eng", "--redis", redis_url, "--json")
    assert json.loads(res.stdout)["recipients"] == [2]


@pytest.mark.parametrize(
    ("args", "typo"),
    [
        (("online", "add", "--tenant", "acme", "-1"), "-1"),
        (("online", "remove", "--tenant", "acme", "3", "-12", "--json"), "-12"),
        (("ring", "locate", "--nodes", "a,b", "-1"), "-1"),
    ],
)
def test_a_signed_number_where_a_user_id_goes_is_one_line(args: tuple[str, ...], typo: str) -> None:
    """`-1` reaches click as an unknown option; the user gets the id parser's message."""
    done = run_wsop(*args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: user id {typo} is negative"]


def test_too_large_respects_max_users(redis_url: str, tmp_path: Path) -> None:
    path = write(tmp_path / "members.csv", "tenant,team,user\nacme,eng,100\n")
    res = invoke("seed", "load", str(path), "--max-users", "100", "--redis", redis_url)
    assert_clean_error(res, 2, "user id 100 is too large: max_users is 100")


def test_resolve_errors(redis_url: str, r: redis.Redis, members: Path) -> None:
    assert_clean_error(
        invoke("resolve", "--tenant", "acme", "--redis", redis_url), 2, "no team given"
    )
    assert_clean_error(
        invoke("resolve", "--tenant", "nobody", "--team", "a", "--redis", redis_url),
        1,
        "unknown tenant 'nobody'",
    )
    assert invoke("seed", "load", str(members), "--redis", redis_url).exit_code == 0
    r.lpush(keys.team_key("acme", "bad"), "x")
    assert_clean_error(
        invoke("resolve", "--tenant", "acme", "--team", "bad", "--redis", redis_url),
        1,
        "teams:{acme}:bad holds a list, not a bitmap string (WRONGTYPE)",
    )


def test_unreachable_redis_names_the_url() -> None:
    res = invoke("resolve", "--tenant", "a", "--team", "b", "--redis", "redis://127.0.0.1:9")
    assert_clean_error(res, 1, "cannot reach Redis at redis://127.0.0.1:9")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://:badport", "Port could not be cast"),
        ("redis://127.0.0.1:99999", "Port out of range"),
        ("redis://[::1", "Invalid IPv6 URL"),
        ("redis://127.0.0.1:6379/abc", "database 'abc' is not a number"),
        ("redis://127.0.0.1:6379/?socket_timeout=abc", "socket_timeout"),
        ("redis+cluster://127.0.0.1:1/3", "database 0 only"),
        ("redis://u:pw@[::1", "Invalid IPv6 URL"),
    ],
)
def test_malformed_redis_url_is_a_usage_error(url: str, reason: str) -> None:
    """These were "cannot reach Redis" (exit 1): a typo in the URL is not an outage."""
    res = invoke("resolve", "--tenant", "a", "--team", "b", "--redis", url)
    assert_clean_error(res, 2, "malformed Redis URL")
    assert reason in res.stderr and ":pw@" not in res.stderr


def test_a_database_the_server_lacks_is_a_usage_error(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/99999"
    res = invoke("resolve", "--tenant", "a", "--team", "b", "--redis", url)
    assert_clean_error(res, 2, "this server has no such database")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@127.0.0.1:9/0", "cannot reach Redis at redis://user:***@127.0.0.1:9/0"),
        ("redis://:pw@127.0.0.1:9", "cannot reach Redis at redis://:***@127.0.0.1:9"),
        ("redis+cluster://127.0.0.1:9", "cannot reach Redis at redis+cluster://127.0.0.1:9"),
    ],
)
def test_unreachable_redis_is_one_runtime_line_without_the_password(url: str, shown: str) -> None:
    """The cluster's RedisClusterException was an internal error; passwords were shown."""
    res = invoke("resolve", "--tenant", "a", "--team", "b", "--redis", url)
    assert_clean_error(res, 1, shown)
    assert "pw" not in res.stderr and "internal error" not in res.stderr


def test_bad_synthetic_flags() -> None:
    assert_clean_error(invoke("seed", "synthetic", "--online", "2"), 2, "--online is a fraction")
    assert_clean_error(invoke("seed", "synthetic", "--users", "0"), 2, "--users must be")
    res = invoke("seed", "synthetic", "--seed", "-1", "--redis", "redis://127.0.0.1:9")
    assert_clean_error(res, 2, "--seed must be a non-negative integer")


def test_subprocess_json_and_error(redis_url: str, members: Path) -> None:
    env = {"WSOP_REDIS_URL": redis_url}
    done = run_wsop("seed", "load", str(members), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tenants"] == 2
    done = run_wsop("resolve", "--tenant", "acme", "--team", "eng", "--all", "--json", env=env)
    assert json.loads(done.stdout)["recipients"] == [1, 2]
    done = run_wsop("online", "add", "--tenant", "acme", "--", "-1", env=env)
    assert done.returncode == 2
    assert "user id -1 is negative" in done.stderr and "Traceback" not in done.stderr
    done = run_wsop("resolve", "--bogus-flag", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_embedded_default_starts_reuses_and_stops(members: Path) -> None:
    first = run_wsop("seed", "load", str(members), "--json")
    assert first.returncode == 0, first.stderr
    status = json.loads(run_wsop("redis", "status", "--json").stdout)
    assert status["running"] and status["url"].startswith("redis://127.0.0.1:")
    again = run_wsop("resolve", "--tenant", "acme", "--team", "eng", "--all", "--json")
    assert json.loads(again.stdout)["recipients"] == [1, 2]
    assert json.loads(run_wsop("redis", "status", "--json").stdout)["pid"] == status["pid"]
    stopped = json.loads(run_wsop("redis", "stop", "--json").stdout)
    assert stopped["stopped"] is True
    assert json.loads(run_wsop("redis", "status", "--json").stdout)["running"] is False


def test_the_state_sweep_stops_an_embedded_redis_a_test_left_running(tmp_path: Path) -> None:
    """What the autouse fixture does after every test: nothing started in a test's state
    dir survives it (the suite used to leave redis-server processes behind)."""
    import os

    from tests.conftest import sweep_state_dir
    from wsop.local import embedded

    state = tmp_path / "state"
    env = {"WSOP_STATE_DIR": str(state)}
    done = run_wsop("redis", "start", "--json", env=env)
    assert done.returncode == 0, done.stderr
    pid = json.loads(done.stdout)["pid"]
    os.kill(pid, 0)  # running
    os.environ["WSOP_STATE_DIR"] = str(state)  # (the autouse fixture restores it)
    sweep_state_dir(state)
    assert not embedded.status().running
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_online_list_and_count(redis_url: str, members: Path) -> None:
    assert invoke("seed", "load", str(members), "--redis", redis_url).exit_code == 0
    users = [str(u) for u in (3, 1, 70_000, 9)]
    assert invoke("online", "add", "--tenant", "acme", *users, "--redis", redis_url).exit_code == 0
    res = invoke("online", "list", "--tenant", "acme", "--redis", redis_url, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout) == {
        "tenant": "acme", "users": [1, 3, 9, 70_000], "count": 4, "truncated": False,
    }  # fmt: skip
    res = invoke(
        "online", "list", "--tenant", "acme", "--limit", "2", "--redis", redis_url, "--json"
    )
    assert json.loads(res.stdout) == {
        "tenant": "acme", "users": [1, 3], "count": 4, "truncated": True,
    }  # fmt: skip
    res = invoke("online", "count", "--tenant", "acme", "--redis", redis_url, "--json")
    assert json.loads(res.stdout) == {"tenant": "acme", "count": 4}
    human = invoke("online", "list", "--tenant", "acme", "--limit", "2", "--redis", redis_url)
    assert human.stdout.splitlines() == [
        "4 user(s) online in acme",
        "1, 3, … (+2 more; --json lists 2)",
    ]
    human = invoke("online", "count", "--tenant", "acme", "--redis", redis_url)
    assert human.stdout.strip() == "4 user(s) online in acme"
    # a tenant nobody ever connected to: nobody online (not an error)
    res = invoke("online", "count", "--tenant", "nobody", "--redis", redis_url, "--json")
    assert json.loads(res.stdout) == {"tenant": "nobody", "count": 0}


def test_online_list_and_count_errors(redis_url: str, r: redis.Redis) -> None:
    res = invoke("online", "list", "--tenant", "a{b}", "--redis", redis_url)
    assert_clean_error(res, 2, "invalid tenant name")
    res = invoke("online", "list", "--tenant", "acme", "--limit", "-1", "--redis", redis_url)
    assert_clean_error(res, 2, "--limit must be >= 0")
    r.lpush(keys.online_key("acme"), "x")
    for command in ("list", "count"):
        res = invoke("online", command, "--tenant", "acme", "--redis", redis_url)
        assert_clean_error(res, 1, "WRONGTYPE")


@pytest.mark.parametrize("command", [("redis", "start"), ("seed", "synthetic"), ("up",)])
@pytest.mark.parametrize("where", ["a-file", "/proc/x", "/proc"])
def test_unusable_state_dir_is_named(tmp_path: Path, command: tuple[str, ...], where: str) -> None:
    """WSOP_STATE_DIR naming a file, a path under /proc or a directory that takes no
    files is the user's setting: one line naming it, exit 2 (was an internal error)."""
    state = str(write(tmp_path / "a-file", "")) if where == "a-file" else where
    done = run_wsop(*command, env={"WSOP_STATE_DIR": state, "WSOP_REDIS_URL": ""})
    assert done.returncode == 2, done.stderr
    assert f"WSOP_STATE_DIR={state!r} is not a usable state directory" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
