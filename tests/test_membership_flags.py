"""`wsop lb` and `wsop sidecar` take exactly one membership source."""

from __future__ import annotations

import pytest

from tests.conftest import run_wsop
from wsop.cli.app import membership_source
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
