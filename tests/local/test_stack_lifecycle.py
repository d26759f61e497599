"""The local stack's launchers leave nothing running when they fail or are interrupted:
every process `up`/`scale` started is stopped (or recorded for `wsop down`), whatever
the moment the interrupt lands."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, kill_matching, run_wsop
from wsop.errors import BackendUnavailable
from wsop.local import stack, stack_proc
from wsop.local.limits import MAX_SIDECARS
from wsop.local.redis_binary import free_port

SLEEPER = shlex.join([sys.executable, "-c", "import time; time.sleep(120)"])
"""A sidecar that starts and never answers /healthz: start-up waits until interrupted."""


def state() -> Path:
    return Path(os.environ["WSOP_STATE_DIR"])


def stack_pids() -> list[int]:
    """Live (not zombie) processes whose command line names this test's members file."""
    needle = str(state() / "stack.json").encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle not in (proc / "cmdline").read_bytes():
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:
            continue
        found.append(int(proc.name))
    return found


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(autouse=True)
def _kill_leftovers() -> Iterator[None]:
    yield
    kill_matching(str(state()))


def test_interrupt_between_spawn_and_record_stops_every_sidecar(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """SIGINT right after the third sidecar's Popen returned (before `up` recorded it):
    all three are stopped, none is left for nobody to stop."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    monkeypatch.setenv("WSOP_SIDECAR_CMD", SLEEPER)
    real = stack._start_sidecar
    calls = []

    def start_then_interrupt(*args, **kwargs):
        started = real(*args, **kwargs)
        calls.append(started)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the interrupt lands here, before the caller keeps the pid
        return started

    monkeypatch.setattr(stack, "_start_sidecar", start_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        stack.up(sidecars=5, port=free_port(), insecure=True, redis_url=redis_url)
    assert len(calls) == 3
    assert wait_for(lambda: not stack_pids()), f"left running: {stack_pids()}"
    assert not (state() / "stack.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_detached_up_interrupted_during_start_up_leaves_nothing(
    sig: signal.Signals, redis_url: str
) -> None:
    """`wsop up --detach` stopped (Ctrl-C or SIGTERM) while its sidecars start: exit 130,
    one line, and no process of its state dir survives."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsop.cli.main", "up", "--detach", "--sidecars", "3",
         "--port", str(free_port()), "--redis", redis_url, "--insecure", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WSOP_SIDECAR_CMD": SLEEPER},
    )  # fmt: skip
    try:
        assert wait_for(lambda: len(stack_pids()) >= 2), "the sidecars never started"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert err.strip() == "error: interrupted"
        assert wait_for(lambda: not stack_pids(), 5), f"left running: {stack_pids()}"
        assert not (state() / "stack.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "args",
    [
        ("up", "--detach", "--sidecars", "100000"),
        ("up", "--sidecars", "65"),
        ("scale", "--sidecars", "65"),
        ("loadtest", "--local", "--sidecars", "65", "--duration", "5"),
        ("loadtest", "--local", "--duration", "5", "--chaos", "scale=100000@1s"),
    ],
)
def test_more_sidecars_than_the_cap_is_a_usage_error(args: tuple[str, ...]) -> None:
    """Past MAX_SIDECARS: exit 2, one line, before a single process is started."""
    result = run_wsop(*args, "--json")
    assert result.returncode == 2, result.stderr
    assert f"at most {MAX_SIDECARS} on the local stack" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not stack_pids() and not (state() / "stack.json").exists()
    assert not (state() / "redis").exists()  # not even the embedded Redis


STANDIN = shlex.join([sys.executable, str(ROOT / "tests" / "standin_sidecar.py")])


def recorded() -> dict:
    return json.loads((state() / "stack.json").read_text())


def test_scale_with_a_dead_sidecar_says_so_and_changes_nothing(redis_url: str) -> None:
    """s0 killed behind the stack's back: `scale` names it, starts nothing, records
    nothing (it used to wait 30 s, say the LB "did not pick up ['s0','s1','s2'] (it sees
    ['s0','s1','s2'])" and leave s2 running and recorded)."""
    env = {"WSOP_SIDECAR_CMD": STANDIN}
    up = run_wsop(
        "up", "--detach", "--sidecars", "2", "--port", str(free_port()), "--redis", redis_url,
        "--insecure", "--json", env=env,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    s0 = recorded()["sidecars"][0]
    os.kill(s0["pid"], signal.SIGKILL)
    assert wait_for(lambda: len(stack_pids()) == 2)  # the LB and s1
    began = time.monotonic()
    result = run_wsop("scale", "--sidecars", "3", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: s0 (pid {s0['pid']}) of the local stack is not running, so no new "
        "membership can settle; nothing was changed (restart the stack: `wsop down`, "
        "then `wsop up`)"
    )
    assert time.monotonic() - began < 10
    assert [s["name"] for s in recorded()["sidecars"]] == ["s0", "s1"]
    assert len(stack_pids()) == 2
    assert run_wsop("down", env=env).returncode == 0


def test_scale_up_that_does_not_settle_is_rolled_back(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """Sidecars added to a membership that never settles are dropped from the file again
    and stopped, and the error says so."""
    monkeypatch.setenv("WSOP_SIDECAR_CMD", STANDIN)
    stack.up(sidecars=1, port=free_port(), insecure=True, redis_url=redis_url)
    try:
        real = stack_proc.wait_members

        def never_with_s1(record, timeout: float = 30.0) -> None:
            if "s1" in {s.name for s in record.sidecars}:
                raise BackendUnavailable("the LB sees ['s0']")
            real(record, timeout)

        monkeypatch.setattr(stack_proc, "wait_members", never_with_s1)
        with pytest.raises(BackendUnavailable, match=r"the LB sees \['s0'\]; stopped s1 again"):
            stack.scale(2)
        assert [s["name"] for s in recorded()["sidecars"]] == ["s0"]
        assert wait_for(lambda: len(stack_pids()) == 2, 5)  # the LB and s0, not s1
    finally:
        stack.down()
