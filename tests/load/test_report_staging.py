"""`--report DIR` is whole or absent: staged beside DIR, moved in once complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, kill_matching
from wsop.errors import WsopError
from wsop.load.staging import staged_dir


def test_a_complete_stage_replaces_only_its_own_files(tmp_path: Path) -> None:
    target = tmp_path / "rep"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    (target / "report.html").write_text("old")
    with staged_dir(target) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".rep.")
        (stage / "report.html").write_text("new")
        assert (target / "report.html").read_text() == "old"  # not before it is complete
    assert (target / "report.html").read_text() == "new"
    assert (target / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_a_new_target_is_one_rename(tmp_path: Path) -> None:
    with staged_dir(tmp_path / "a" / "rep") as stage:
        (stage / "results.json").write_text("{}")
    assert (tmp_path / "a" / "rep" / "results.json").exists()
    assert oct((tmp_path / "a" / "rep").stat().st_mode & 0o777) != oct(0o700)


@pytest.mark.parametrize("error", [KeyboardInterrupt, WsopError])
def test_an_unfinished_stage_leaves_the_target_as_it_was(
    tmp_path: Path, error: type[BaseException]
) -> None:
    with pytest.raises(error), staged_dir(tmp_path / "rep") as stage:
        (stage / "locust.log").write_text("half")
        raise error("stop")
    assert list(tmp_path.iterdir()) == []


def test_an_error_naming_a_staged_file_keeps_it(tmp_path: Path) -> None:
    with pytest.raises(WsopError), staged_dir(tmp_path / "rep") as stage:
        (stage / "locust.log").write_text("why it died")
        raise WsopError(f"locust died; log {stage / 'locust.log'}")
    assert (stage / "locust.log").read_text() == "why it died"
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_loadtest_leaves_no_report(
    tmp_path: Path, sig: signal.Signals, stack_and_redis_stopped: None
) -> None:
    """Ctrl-C (or SIGTERM, which killed it outright) mid-run: exit 130, no `rep/` (it had
    locust's CSVs, its log and a status.json but no report.html or results.json), no
    staging directory, no stack left running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsop.cli.main", "loadtest", "--local", "--duration", "20",
         "--rate", "20", "--connections", "10", "--report", str(tmp_path / "rep"), "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def mid_run() -> bool:  # a status.json: in the staging dir (or, before, in rep/)
            return bool(list(tmp_path.glob("*rep*/status.json")))

        deadline = time.monotonic() + 60
        while not mid_run() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mid_run(), "the run never started"
        time.sleep(1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert list(tmp_path.iterdir()) == []
        state = Path(os.environ["WSOP_STATE_DIR"])
        assert not (state / "stack.json").exists()
        assert not kill_matching(str(state / "stack.json"))  # no LB or sidecar survived
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_later_report_removes_only_the_earlier_reports_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "rep"
    target.mkdir()
    (target / "notes.txt").write_text("the user's")
    with staged_dir(target) as stage:
        (stage / "results.json").write_text("1")
        (stage / "worker-1.log").write_text("w1")
        (stage / "charts").mkdir()
    with staged_dir(target) as stage:
        (stage / "results.json").write_text("2")
    names = sorted(p.name for p in target.iterdir())
    assert names == [".wsop-report", "notes.txt", "results.json"]
    assert (target / "results.json").read_text() == "2"
    (target / ".wsop-report").write_text("../outside\n/etc\nnotes.txt\n.\n")
    (tmp_path / "outside").write_text("x")
    with staged_dir(target) as stage:
        (stage / "results.json").write_text("3")
    assert (tmp_path / "outside").exists()  # never outside the report directory
    assert not (target / "notes.txt").exists()  # (the manifest said it was the report's)
