"""Server configs refuse what the CLI refuses (issue 11): ports, sizes, member names, token
settings. `wsop sidecar --port 70000`, `--max-frame-bytes -1` and `--name 'z z'` used to
be accepted (a name with a space breaks move frames and peer URLs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_wsop
from wsop.checks import check_member_name
from wsop.discovery import StaticMembership, parse_peers, parse_registry
from wsop.errors import UsageError
from wsop.k8s.discovery import pod_state
from wsop.lb.config import LBConfig
from wsop.sidecar import SidecarConfig

NOWHERE = "redis://127.0.0.1:1"  # never reached: the flags are refused before any I/O


@pytest.mark.parametrize("name", ["s0", "s-12", "wsop-sidecar-7d9f8c6b5-x2x7q", "a" * 63, "0"])
def test_member_names_are_dns_labels(name):
    assert check_member_name(name) == name
    assert SidecarConfig(name=name).name == name


@pytest.mark.parametrize(
    "name", ["z z", "S0", "s_0", "-s0", "s0-", "a" * 64, "", "s0.x", "s,0", "s=0", "é", 7]
)
def test_bad_member_names_are_refused_everywhere(name):
    with pytest.raises(UsageError, match="DNS label"):
        SidecarConfig(name=name)
    if isinstance(name, str) and name.strip() and "," not in name and "=" not in name:
        with pytest.raises(UsageError, match="DNS label"):
            parse_peers(f"{name}=ws://127.0.0.1:1")
    registry = {"sidecars": [{"name": name, "url": "ws://h:1"}]}
    with pytest.raises(UsageError, match="DNS label" if isinstance(name, str) else "'name'"):
        parse_registry(json.dumps(registry))
    with pytest.raises(UsageError, match="DNS label"):
        StaticMembership({name: "ws://h:1"})


def test_a_pod_whose_name_is_not_a_label_is_not_a_member():
    pod = {
        "metadata": {"name": "Bad_Pod"},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    state = pod_state(pod)
    assert not state.ready and "DNS label" in state.reason
    pod["metadata"]["name"] = "good-pod"
    assert pod_state(pod).ready


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"port": 70000}, "1-65535"),
        ({"port": -1}, "1-65535"),
        ({"port": True}, "1-65535"),
        ({"max_frame_bytes": -1}, "max_frame_bytes"),
        ({"max_frame_bytes": 0}, "max_frame_bytes"),
        ({"close_window_s": float("nan")}, "close_window_s"),
        ({"slow_client_s": 0}, "--slow-client"),
        ({"slow_client_s": float("inf")}, "--slow-client"),
        ({"upstream": "http://127.0.0.1:3001"}, "ws://"),
        ({"host": ""}, "host"),
        ({"leeway_s": -1}, "--leeway"),
        ({"max_token_lifetime_s": -1}, "--max-token-lifetime"),
        ({"jwks": "/nonexistent/jwks.json"}, "cannot read JWKS"),
        ({"jwt_public_key": "/nonexistent/key.pem"}, "cannot read public key"),
    ],
)
def test_sidecar_config_refuses(kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        SidecarConfig(name="s0", **kwargs)


def test_port_zero_means_pick_one():
    assert SidecarConfig(name="s0", port=0).port == 0
    assert LBConfig("127.0.0.1", 0, StaticMembership({}), "rendezvous").port == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"port": 65536}, "1-65535"),
        ({"name": "l b"}, "DNS label"),
        ({"drain_s": -1.0}, "drain_s"),
        ({"open_timeout": 0}, "open_timeout"),
        ({"move_drain_s": float("inf")}, "move_drain_s"),
        ({"leeway_s": 2.5}, "--leeway"),
        ({"jwks": "/nonexistent/jwks.json"}, "cannot read JWKS"),
    ],
)
def test_lb_config_refuses(kwargs, needle):
    args = {"host": "127.0.0.1", "port": 0, "source": StaticMembership({}), "algo": "rendezvous"}
    with pytest.raises(UsageError, match=needle):
        LBConfig(**{**args, **kwargs})


def one_line_exit_2(done, needle: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert needle in done.stderr and "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--port", "70000"], "1-65535"),
        (["--max-frame-bytes", "-1"], "max_frame_bytes"),
        (["--name", "z z"], "DNS label"),
        (["--leeway", "-3"], "--leeway"),
        (["--max-token-lifetime", "-1"], "--max-token-lifetime"),
        (["--jwks", "/nonexistent.json"], "cannot read JWKS"),
        (["--jwt-public-key", "/nonexistent.pem"], "cannot read public key"),
        (["--peers", "z z=ws://127.0.0.1:1"], "DNS label"),
    ],
)
def test_sidecar_command_refuses_with_one_line(flags, needle):
    given = {"--name": "s0", "--peers": "s0=ws://127.0.0.1:1", "--redis": NOWHERE}
    given.update(zip(flags[::2], flags[1::2], strict=True))
    args = [part for flag_value in given.items() for part in flag_value]
    one_line_exit_2(run_wsop("sidecar", *args, env={"WSOP_SECRET": "k" * 32}), needle)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--port", "70000"], "1-65535"),
        (["--name", "L B"], "DNS label"),
        (["--leeway", "-1"], "--leeway"),
        (["--jwks", "/nonexistent.json"], "cannot read JWKS"),
        (["--peers", "Z=ws://127.0.0.1:1"], "DNS label"),
    ],
)
def test_lb_command_refuses_with_one_line(flags, needle):
    args = flags if "--peers" in flags else [*flags, "--peers", "s0=ws://127.0.0.1:1"]
    one_line_exit_2(run_wsop("lb", *args, env={"WSOP_SECRET": "k" * 32}), needle)


def test_env_vars_feed_the_token_flags(tmp_path: Path):
    done = run_wsop(
        "lb", "--peers", "s0=ws://127.0.0.1:1",
        env={"WSOP_SECRET": "k" * 32, "WSOP_TOKEN_LEEWAY": "-1"},
    )  # fmt: skip
    one_line_exit_2(done, "--leeway")
