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


MANIFEST = ".wsop-report"
"""The names of a report's own files, kept in the report directory: the next report
into it removes the ones it does not write again (a run with fewer workers leaving an
older run's worker logs would look like part of the new report), and nothing else."""


def publish(stage: Path, target: Path) -> None:
    """Move `stage`'s files into `target`: one rename when `target` is missing or empty;
    else file by file (`target` may hold other things: `--report .` must not replace
    the current directory), after removing what the last report there left and this
    one does not replace (`MANIFEST`)."""
    names = sorted(item.name for item in stage.iterdir())
    (stage / MANIFEST).write_text("".join(f"{name}\n" for name in names))
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(stage, target)
        return
    if not target.is_dir():
        shutil.rmtree(stage, ignore_errors=True)
        raise WsopError(f"--report {target}: exists and is not a directory")
    for name in set(_manifest(target)) - set(names):
        stale = target / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    for item in stage.iterdir():
        dest = target / item.name
        if dest.is_dir() and not item.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
    stage.rmdir()


def _manifest(target: Path) -> list[str]:
    """The files the last report in `target` wrote (plain names only: a manifest edited
    to say `../x` or `/etc` names nothing)."""
    try:
        lines = (target / MANIFEST).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [n for n in lines if n not in ("", ".", "..", MANIFEST) and not {"/", "\0"} & set(n)]
