"""`--report DIR` appears whole or not at all: the run writes into a hidden directory
next to DIR and it is moved into place only once the report is complete.

A load test interrupted (Ctrl-C, SIGTERM) or failed half-way used to leave DIR with
locust's CSVs, its log and a mid-run status.json but no report.html or results.json:
a directory that looks like a report and is not one. Staging next to DIR (same
filesystem) makes the final move a rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wsop.errors import WsopError
from wsop.local.stack_proc import interrupts_deferred


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh `.<name>.*.partial` directory beside `target` to fill; on a clean exit its
    files replace those of `target`, on any exception (an interrupt included) it is
    removed and `target` is left exactly as it was. An error whose message names a file
    in it (the log of a locust that died) keeps it, so that file can be read."""
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # a report dir like `mkdir` makes, not mkdtemp's 0700
    try:
        yield stage
    except BaseException as exc:
        if not (isinstance(exc, WsopError) and str(stage) in str(exc)):
            shutil.rmtree(stage, ignore_errors=True)
        raise
    with interrupts_deferred():  # the move is short: all of it, or (before it) nothing
        publish(stage, target)


def publish(stage: Path, target: Path) -> None:
    """Move `stage`'s files into `target`: one rename when `target` is missing or empty;
    else file by file (`target` may hold other things: `--report .` must not replace
    the current directory)."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(stage, target)
        return
    if not target.is_dir():
        shutil.rmtree(stage, ignore_errors=True)
        raise WsopError(f"--report {target}: exists and is not a directory")
    for item in stage.iterdir():
        dest = target / item.name
        if dest.is_dir() and not item.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
    stage.rmdir()
