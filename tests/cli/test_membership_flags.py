"""`wsop lb` and `wsop sidecar` take exactly one membership source."""

from __future__ import annotations

import pytest

from tests.conftest import run_wsop
from wsop.cli.options import membership_source
from wsop.discovery import StaticMembership
from wsop.errors import UsageError


def test_static_peers_source() -> None:
    source = membership_source(None, "s0=ws://127.0.0.1:1", None, "a=b", None)
    assert isinstance(source, StaticMembership)
    assert source.current() == {"s0": "ws://127.0.0.1:1"}


def test_namespace_excludes_other_sources() -> None:
    with pytest.raises(UsageError, match="one of --members-file, --peers or --namespace"):
        membership_source(None, "s0=ws://127.0.0.1:1", "chat", "a=b", None)


@pytest.mark.parametrize("command", ["lb", "sidecar"])
def test_cli_refuses_two_sources(command: str) -> None:
    args = [command, "--namespace", "chat", "--peers", "s0=ws://127.0.0.1:1", "--insecure"]
    if command == "sidecar":
        args += ["--name", "s0"]
    done = run_wsop(*args)
    assert done.returncode == 2, done.stderr
    assert "give one of --members-file, --peers or --namespace" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["lb", "sidecar"])
def test_servers_refuse_bounded_as_a_routing_algorithm(command: str) -> None:
    """`bounded` depends on live loads: the sidecars used to start and then crash on it
    ('BoundedLoads' object has no attribute 'owner')."""
    args = [command, "--peers", "s0=ws://127.0.0.1:1", "--insecure", "--algo", "bounded"]
    if command == "sidecar":
        args += ["--name", "s0"]
    done = run_wsop(*args)
    assert done.returncode == 2, done.stderr
    assert "--algo bounded cannot route a stack" in done.stderr
    assert "Traceback" not in done.stderr


def test_server_configs_refuse_bounded_too() -> None:
    from wsop.lb.config import LBConfig
    from wsop.sidecar import SidecarConfig

    with pytest.raises(UsageError, match="cannot route"):
        SidecarConfig(name="s0", algo="bounded")
    with pytest.raises(UsageError, match="cannot route"):
        LBConfig("127.0.0.1", 0, StaticMembership({}), "bounded")
    assert SidecarConfig(name="s0").algo == "maglev"  # what the LB uses by default


def test_no_kubeconfig_names_what_lb_reads(tmp_path) -> None:
    """`wsop lb` has no --kubeconfig: the hint was "pass --kubeconfig PATH"."""
    env = {"HOME": str(tmp_path), "KUBECONFIG": "", "KUBERNETES_SERVICE_HOST": ""}
    done = run_wsop("lb", "--namespace", "chat", "--insecure", env=env)
    assert done.returncode == 2, done.stderr
    assert "set KUBECONFIG=PATH" in done.stderr and "--kubeconfig" not in done.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read (Is a directory)"),
        ("a,b\n1,2\n", "not JSON"),
        ('{"members": 5}', "no 'sidecars' list"),
        ("", "not JSON"),
        ('{"sidecars": 5}', "'sidecars' must be a list"),
    ],
)
@pytest.mark.parametrize("command", ["lb", "sidecar"])
def test_a_malformed_members_file_is_refused_at_start(
    tmp_path, command: str, content: str | None, message: str
) -> None:
    """These started a server of "0 sidecars" and said nothing."""
    path = tmp_path / "members"
    path.mkdir() if content is None else path.write_text(content)
    args = [command, "--members-file", str(path), "--insecure", "--port", "0"]
    if command == "sidecar":
        args += ["--name", "s0", "--redis", "redis://127.0.0.1:9"]
    done = run_wsop(*args, timeout=20)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and f"--members-file {path}: " in errors[0]
    assert message in errors[0]


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_lb_drain_seconds_errors_name_the_flag(value: str) -> None:
    done = run_wsop("lb", "--peers", "s0=ws://127.0.0.1:1", "--insecure", "--drain-seconds", value)
    assert done.returncode == 2, done.stderr
    assert "--drain-seconds" in done.stderr and "Traceback" not in done.stderr
