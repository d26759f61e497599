"""Quotas (issue 11, observation 8: nothing limited a user's or a tenant's connections, a
connection's message rate, or a message's fan-out): the pure parts, then real sidecars."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from websockets.exceptions import InvalidStatus

from tests.conftest import run_wsop
from tests.stack_helpers import Sidecars, admin_get, client, recv_json, seed_tenant
from wsop.errors import InputError, UsageError
from wsop.quotas import Limits, Quotas, TokenBucket


def test_a_quotas_document_overrides_the_defaults_per_tenant(tmp_path: Path) -> None:
    base = Limits(connections_per_user=8)
    doc = {
        "default": {"messages_per_second": 50},
        "tenants": {"acme": {"connections_per_tenant": 3, "max_recipients": 10}},
    }
    quotas = Quotas.parse(doc, "q.json", base)
    assert quotas.of("other") == Limits(8, 0, 50, Limits().max_recipients)
    assert quotas.of("acme") == Limits(8, 3, 50, 10)
    path = tmp_path / "q.yaml"
    path.write_text("tenants:\n  acme:\n    connections_per_user: 2\n")
    assert Quotas.load(path).of("acme").connections_per_user == 2


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ([], "expected an object"),
        ({"tenant": {}}, "expected an object"),
        ({"default": {"connections": 3}}, "unknown quota"),
        ({"tenants": {"a": {"max_recipients": -1}}}, ">= 0"),
        ({"tenants": {"a": {"max_recipients": 1.5}}}, "whole number"),
        ({"default": {"messages_per_second": True}}, ">= 0"),
        ({"default": {"connections_per_user": float("inf")}}, "q.json: quota connections_per"),
        ({"default": {"messages_per_second": float("nan")}}, "got nan"),
        ({"tenants": {"a{b": {}}}, "q.json: invalid tenant name 'a{b'"),
        ({"tenants": {"": {}}}, "invalid tenant name ''"),
    ],
)
def test_bad_quotas_are_refused_with_a_reason(doc, error: str) -> None:
    with pytest.raises((InputError, UsageError), match=error):
        Quotas.parse(doc, "q.json")


def test_the_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(50)) == 20  # the burst
    assert sum(bucket.take(1.0) for _ in range(50)) == 10  # a second's worth later
    assert not bucket.take(1.05) and bucket.take(1.1)


@pytest.fixture
def limited(redis_url: str, tmp_path: Path) -> Iterator[Sidecars]:
    quotas = tmp_path / "quotas.json"
    quotas.write_text(
        json.dumps(
            {
                "default": {"connections_per_user": 2, "messages_per_second": 5},
                "tenants": {"small": {"connections_per_tenant": 3, "max_recipients": 4}},
            }
        )
    )
    stack = Sidecars(redis_url, tmp_path / "members.json", {})
    stack.write_members()
    for name in ("s0", "s1"):
        stack.start(name, tmp_path, ["--quotas", str(quotas)])
    stack.write_members()
    time.sleep(0.8)
    yield stack
    stack.stop_all()


def test_connection_limits_hold_across_sidecars(limited: Sidecars, r: redis.Redis) -> None:
    seed_tenant(r, "A", {"eng": {1}})
    seed_tenant(r, "small", {"eng": {1, 2, 3}})
    s0, s1 = limited.procs["s0"].url, limited.procs["s1"].url
    tabs = [client(s0, "A", 1), client(s1, "A", 1)]  # two tabs, on two sidecars
    with pytest.raises(InvalidStatus) as refused:
        client(s0, "A", 1)
    assert refused.value.response.status_code == 429
    assert b"too many connections for this user: 2 of 2" in refused.value.response.body
    tabs.pop().close()
    time.sleep(0.3)
    tabs.append(client(s0, "A", 1))  # a closed tab frees its place
    small = [client(s0, "small", 1), client(s1, "small", 2), client(s0, "small", 3)]
    with pytest.raises(InvalidStatus) as refused:
        client(s1, "small", 3)
    assert b"too many connections for this tenant: 3 of 3" in refused.value.response.body
    metrics = admin_get(s1 + "/metrics").decode()
    assert 'wsop_quota_refused_total{limit="tenant",tenant="small"} 1.0' in metrics
    for ws in tabs + small:
        ws.close()


def test_a_crashed_sidecars_counts_go_with_it(limited: Sidecars, r: redis.Redis) -> None:
    seed_tenant(r, "A", {"eng": {1}})
    s0 = limited.procs["s0"]
    tabs = [client(s0.url, "A", 1), client(s0.url, "A", 1)]
    s0.proc.kill()  # its counts stay in Redis until it is released
    s0.proc.wait()
    with pytest.raises(InvalidStatus):
        client(limited.procs["s1"].url, "A", 1)
    limited.start("s0", Path(limited.members_file).parent, ["--quotas", str(
        Path(limited.members_file).parent / "quotas.json")])  # fmt: skip
    client(limited.procs["s1"].url, "A", 1).close()  # released at its restart
    del tabs


def test_rate_limit_and_recipient_cap_are_error_frames(limited: Sidecars, r: redis.Redis) -> None:
    seed_tenant(r, "A", {"eng": {1, 2}})
    seed_tenant(r, "small", {"big": {1, 2, 3, 4, 5}}, online=range(1, 6))
    url = limited.procs["s0"].url
    ws = client(url, "A", 1)
    for i in range(30):  # 5 msg/s with bursts of 10: the first 10 pass at once
        ws.send(json.dumps({"type": "direct", "to": 2, "data": i, "id": str(i)}))
    frames = [recv_json(ws) for _ in range(30)]
    limited_ids = [f["id"] for f in frames if f.get("code") == "rate_limited"]
    assert len(limited_ids) >= 15 and all(f["type"] in ("ack", "error") for f in frames)
    time.sleep(1.0)  # the bucket refills: the connection was never closed
    ws.send('{"type":"direct","to":2,"data":"later","id":"later"}')
    assert recv_json(ws)["type"] == "ack"
    sender = client(url, "small", 1)
    sender.send('{"type":"team","teams":["big"],"data":"all","id":"t"}')
    error = recv_json(sender)
    assert error["code"] == "too_many_recipients" and error["id"] == "t"
    assert "5 online recipients" in error["message"]
    ws.close()
    sender.close()


def test_bad_quota_flags_are_usage_errors(tmp_path: Path, redis_url: str) -> None:
    bad = tmp_path / "q.json"
    bad.write_text('{"default": {"connections": 1}}')
    for args in (["--quotas", str(bad)], ["--max-recipients", "-1"]):
        done = run_wsop("sidecar", "--name", "s0", "--peers", "s0=ws://h:1", "--insecure",
                        "--redis", redis_url, *args)  # fmt: skip
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr
    done = run_wsop("up", "--detach", "--insecure", "--quotas", str(bad), "--redis", redis_url)
    assert done.returncode == 2 and "unknown quota" in done.stderr


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("q.json", '{"default":{"connections_per_user":1e400}}', "quota connections_per_user"),
        ("q.json", '{"default":{"messages_per_second":NaN}}', "got nan"),
        ("q.yaml", "default: {messages_per_second: .nan}\n", "got nan"),
        ("q.json", '{"tenants":{"a{b":{}}}', "invalid tenant name 'a{b'"),
    ],
)
@pytest.mark.parametrize("command", ["sidecar", "up"])
def test_non_finite_quotas_and_bad_tenants_are_usage_errors(
    tmp_path: Path, command: str, name: str, text: str, message: str
) -> None:
    """1e400 (JSON's inf) was an OverflowError internal error; NaN and `a{b` were taken."""
    path = tmp_path / name
    path.write_text(text)
    extra = ["--name", "s0", "--peers", "s0=ws://h:1"] if command == "sidecar" else ["--detach"]
    done = run_wsop(command, *extra, "--insecure", "--redis", "redis://127.0.0.1:9",
                    "--quotas", str(path))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{path}: " in done.stderr and message in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr  # (+ --insecure's warning)


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_non_finite_rate_flags_are_usage_errors(value: str) -> None:
    flags = ["--name", "s0", "--peers", "s0=ws://h:1", "--insecure", "--redis", "redis://h:9"]
    done = run_wsop("sidecar", *flags, "--max-messages-per-second", value)
    assert done.returncode == 2, done.stderr
    assert "--max-messages-per-second must be a finite number >= 0" in done.stderr


def test_a_refused_handshake_leaves_no_count_and_tenant_labels_are_bounded(
    limited: Sidecars, r: redis.Redis
) -> None:
    from websockets.sync.client import connect

    seed_tenant(r, "A", {"eng": {1}})
    url = limited.procs["s0"].url
    for _ in range(5):  # refused after process_request: by the subprotocol check
        with pytest.raises(InvalidStatus):
            connect(f"{url}/ws?tenant=A&user=1", subprotocols=["chat"], open_timeout=5)
    tabs = [client(url, "A", 1), client(url, "A", 1)]  # the user's 2 places are free
    from wsop.sidecar.metrics import TENANT_LABELS, SidecarMetrics

    metrics = SidecarMetrics("s9")
    for i in range(TENANT_LABELS + 30):
        metrics.tenant_messages(f"t{i}").inc()
    text = metrics.render().decode()
    labels = [
        line for line in text.splitlines() if line.startswith("wsop_tenant_messages_in_total")
    ]
    assert len(labels) == TENANT_LABELS + 1  # and "other" holds the rest, counted
    assert 'wsop_tenant_messages_in_total{tenant="other"} 30.0' in text
    for ws in tabs:
        ws.close()
