"""`wsop publish` as users run it, against a real sidecar and LB on loopback: the ack on
stdout (`--json` or one line), exit 2 for usage errors, exit 1 when the stack answers
with an error (its JSON error on stdout with `--json`) or cannot be reached; one line
on stderr, never a traceback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import run_wsop
from tests.stack_helpers import client, drain, recv_json, seed_tenant, sidecars_behind_lb
from wsop.local.redis_binary import free_port
from wsop.publisher import mint_publish_token

SECRET = "cli-publish-secret-" + "y" * 20


@pytest.fixture(scope="module")
def lb(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("cli-publish")
    with sidecars_behind_lb(redis_server, tmp, {"WSOP_SECRET": SECRET}, ("s0",)) as (_, port):
        r = redis.Redis.from_url(redis_server)
        seed_tenant(r, "cp", {"red": {1, 2}})
        seed_tenant(r, "cq", {"red": {1, 2}})
        seed_tenant(r, "cr", {"red": {2, 3}})
        r.close()
        time.sleep(3)  # past the membership grace: an unheld recipient is reported at once
        yield f"http://127.0.0.1:{port}"


def publish(*args: str, env: dict[str, str] | None = None):
    return run_wsop("publish", *args, env={"WSOP_SECRET": SECRET, **(env or {})})


def one_error_line(result, code: int, needle: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_json_ack_and_the_message(lb: str) -> None:
    ws, other = client(lb.replace("http", "ws"), "cp", 1), client(lb.replace("http", "ws"), "cq", 1)
    try:
        result = publish(
            "--tenant", "cp", "--to", "1", "--data", '{"v": [1, 2]}', "--id", "c1",
            "--sender", "cron", "--url", lb, "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {
            "type": "ack", "id": "c1", "delivered": 1, "undelivered": 0,
        }  # fmt: skip
        got = recv_json(ws)
        assert (got["from"], got["data"], got["id"]) == ("cron", {"v": [1, 2]}, "c1")
        assert drain(other) == []  # user 1 of tenant cq: nothing
    finally:
        ws.close()
        other.close()


def test_human_output_for_a_team_with_an_offline_recipient(lb: str) -> None:
    ws = client(lb.replace("http", "ws"), "cr", 2)
    try:
        result = publish(
            "--tenant", "cr", "--team", "red", "--team", "blue", "--data", '"hi"', "--url", lb
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "delivered to 1 of 1 recipient(s) in cr"
        assert recv_json(ws)["teams"] == ["red", "blue"]
        result = publish("--tenant", "cr", "--to", "9", "--data", "1", "--id", "x", "--url", lb)
        assert result.stdout.strip() == (
            "delivered to 0 of 1 recipient(s) in cr (1 undelivered), id x"
        )
    finally:
        ws.close()


def test_token_from_the_environment_and_the_admin_token(lb: str) -> None:
    ws = client(lb.replace("http", "ws"), "cp", 1)
    try:
        token = mint_publish_token(SECRET, "cp", "env-bot")
        result = publish(
            "--tenant", "cp", "--to", "1", "--data", "1", "--url", lb, "--json",
            env={"WSOP_PUBLISH_TOKEN": token},
        )  # fmt: skip
        assert json.loads(result.stdout)["delivered"] == 1, result.stderr
        assert recv_json(ws)["from"] == "env-bot"
        # no secret at all: the admin token (servers take it for any tenant), from null
        result = publish(
            "--tenant", "cp", "--to", "1", "--data", "2", "--url", lb,
            env={"WSOP_SECRET": "", "WSOP_ADMIN_TOKEN": "test-admin-token"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert recv_json(ws)["from"] is None
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--to", "1", "--team", "red", "--data", "1"), "not both"),
        (("--data", "1"), "either --to"),
        (("--to", "1", "--data", "{bad"), "--data is not JSON"),
        (("--to", "1", "--data", "NaN"), "--data is not JSON"),
        (("--to", "1", "--data", "1", "--token", "t", "--sender", "x"), "--sender"),
        (("--to", "1", "--data", "1", "--url", "ftp://x"), "--url"),
        (("--to", "1", "--data", "1", "--url", "http://:bad"), "--url must be a URL http://"),
        (("--to", "1", "--data", "1", "--url", "ws://[::1"), "--url must be a URL http://"),
        (("--to", "1"), "--data"),
        # what the stack would refuse with 400, refused before sending (exit 2)
        (("--to", "-1", "--data", "1"), "--to: 'to' must be"),
        (("--to", "", "--data", "1"), "--to: 'to' must be"),
        (("--team", "", "--data", "1"), "--team: team names match"),
        (("--team", "x y", "--data", "1"), "--team: team names match"),
        (("--to", "1", "--id", "x" * 129, "--data", "1"), "--id: id must be a string of at"),
        (("--to", "1", "--data", "1e999"), "--data is not JSON: number out of range"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], needle: str) -> None:
    one_error_line(publish("--tenant", "cp", *args), 2, needle)


def test_the_stacks_errors_exit_1(lb: str) -> None:
    wrong = mint_publish_token(SECRET, "cq")
    result = publish(
        "--tenant", "cp", "--to", "1", "--data", "1", "--url", lb, "--token", wrong, "--json"
    )
    one_error_line(result, 1, "forbidden (HTTP 403)")
    assert json.loads(result.stdout)["code"] == "forbidden"
    result = publish("--tenant", "nosuch", "--team", "a", "--data", "1", "--url", lb)
    one_error_line(result, 1, "not_found (HTTP 404)")
    assert result.stdout == ""
    result = publish("--tenant", "cp", "--to", "007", "--data", "1", "--url", lb)
    one_error_line(result, 1, "bad_request (HTTP 400)")
    result = publish(
        "--tenant", "cp", "--to", "1", "--data", "1", "--token", "nonsense", "--url", lb
    )
    one_error_line(result, 1, "unauthorized (HTTP 401)")


def test_unreachable_and_no_stack_exit_1(tmp_path: Path) -> None:
    result = publish(
        "--tenant", "cp", "--to", "1", "--data", "1", "--url", f"http://127.0.0.1:{free_port()}"
    )
    one_error_line(result, 1, "cannot reach")
    result = publish("--tenant", "cp", "--to", "1", "--data", "1")
    one_error_line(result, 1, "no local stack running")
