"""Faults on the local stack, as library calls: what `wsop loadtest --chaos` injects.

Each one does to a local process what Kubernetes does to a pod, so a chaos run on a
laptop exercises the same recovery paths as a cluster:

- `kill_sidecar`: SIGKILL (a node or OOM kill: no shutdown, no 1012, no presence
  cleanup), the dead one leaves the members file at once (the endpoints controller
  drops a dead pod), and a replacement starts under a NEW name (a Deployment's new pod
  never reuses the old name) and joins once healthy;
- `roll_sidecar`: one step of a rolling update: out of the membership, `/drain` onto
  the others (the preStop hook), SIGTERM, and a replacement under a new name joins;
- `restart_redis`: the embedded Redis dies (SIGKILL, no snapshot) and an empty one
  starts on the same port: every key is gone, ACL and presence alike.

New names are the lowest `s{k}` neither in the stack nor in `avoid`: the caller passes
every name it has seen, so a name is never reused within a run (peers and presence
entries must not mistake a newcomer for the process that died).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from wsop.checks import redact_url
from wsop.errors import BackendUnavailable, UsageError, WsopError
from wsop.local import embedded, stack, stack_file, stack_proc
from wsop.local.stack_file import ProcRecord, StackRecord, sidecar_index


def names(record: StackRecord) -> set[str]:
    return {s.name for s in record.sidecars}


def current_names() -> set[str]:
    record = stack_file.load()
    return names(record) if record is not None else set()


def next_name(record: StackRecord, avoid: Iterable[str] = ()) -> str:
    """The lowest `s{k}` not running and not in `avoid`."""
    taken = names(record) | set(avoid)
    k = 0
    while f"s{k}" in taken:
        k += 1
    return f"s{k}"


def pick_victim(record: StackRecord, name: str | None = None) -> ProcRecord:
    """`name`, else the sidecar holding the most connections (ties: the lowest index):
    the fault that hurts most is the one worth testing."""
    if not record.sidecars:
        raise WsopError("the local stack has no sidecar left")
    if name is not None:
        for sidecar in record.sidecars:
            if sidecar.name == name:
                return sidecar
        raise UsageError(f"no sidecar named {name!r} (running: {sorted(names(record))})")

    def load(sidecar: ProcRecord) -> tuple[int, int]:
        payload = stack_proc.admin_get(sidecar, "/connections", record.admin_token, record.ca_file)
        count = payload.get("connections") if isinstance(payload, dict) else None
        return (count if isinstance(count, int) else -1, -sidecar_index(sidecar.name))

    return max(record.sidecars, key=load)


def _join(record: StackRecord, name: str) -> tuple[StackRecord, ProcRecord]:
    """Start sidecar `name`, wait until healthy, add it to the members file, wait until
    the LB and every sidecar route over the new membership."""
    taken = {record.lb.port, *(s.port for s in record.sidecars)}
    new: list[tuple[ProcRecord, subprocess.Popen[bytes]]] = []
    try:
        new.append(stack._start_sidecar(record, name, taken))
        stack_proc.wait_healthy(new, ca=record.ca_file)
    except BaseException:
        stack_proc.terminate([r for r, _ in new], timeout=5)
        raise
    joined = new[0][0]
    record = record.with_sidecars([*record.sidecars, joined])
    stack_file.save(record)
    stack_proc.wait_members(record)
    return record, joined


def _without(record: StackRecord, victim: ProcRecord) -> StackRecord:
    record = record.with_sidecars([s for s in record.sidecars if s.name != victim.name])
    stack_file.save(record)
    return record


def kill_sidecar(
    name: str | None = None, avoid: Iterable[str] = (), replace: bool = True
) -> dict[str, Any]:
    """SIGKILL one sidecar, drop it from the membership, and (with `replace`) wait until
    its replacement under a new name has joined. Without `replace` the caller starts it
    with `join_sidecar(out["replacement"])`, as a ReplicaSet controller would, while
    other faults go on."""
    with stack_file.locked():
        record = stack._require_running()
        victim = pick_victim(record, name)
        replacement = next_name(record, {victim.name, *avoid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(victim.pid, 0)  # ours when this process started the stack
        _without(record, victim)
    out: dict[str, Any] = {"victim": victim.name, "replacement": replacement}
    if replace:
        out.update(join_sidecar(replacement, avoid))
    return out


def roll_sidecar(
    name: str | None = None, avoid: Iterable[str] = (), replace: bool = True
) -> dict[str, Any]:
    """Replace one sidecar the way a rolling update does: leave, drain, stop, and (with
    `replace`, else see `kill_sidecar`) a new one joins."""
    from wsop.drain import drain

    with stack_file.locked():
        record = stack._require_running()
        victim = pick_victim(record, name)
        replacement = next_name(record, {victim.name, *avoid})
        record = _without(record, victim)
        stack_proc.wait_members(record)
        out: dict[str, Any] = {"victim": victim.name, "replacement": replacement}
        onto = sorted(names(record))
        try:
            result = drain(
                victim.http, record.admin_token, onto, stack.DRAIN_TIMEOUT_S, ca=record.ca_file
            )
            out.update(moved=result.moving, remaining=result.remaining, drain_s=result.waited_s)
        except WsopError as exc:  # nowhere to go or refusing: SIGTERM still closes with 1012
            out["drain_error"] = str(exc)
        out["killed"] = bool(stack_proc.terminate([victim]))
    if replace:
        out.update(join_sidecar(replacement, avoid))
    return out


def join_sidecar(name: str, avoid: Iterable[str] = ()) -> dict[str, Any]:
    """Start sidecar `name` (another new name if it got taken meanwhile) and wait until
    the LB and every sidecar route over the membership that includes it."""
    started = time.monotonic()
    with stack_file.locked():
        record = stack._require_running()
        if name in names(record):
            name = next_name(record, {name, *avoid})
        _join(record, name)
    return {"joined": name, "join_s": round(time.monotonic() - started, 2)}


def check_restartable(redis_url: str) -> None:
    """`restart-redis` kills and restarts a server: only the embedded one is ours to."""
    current = embedded.status()
    if not (current.running and _same_server(current.url, redis_url)):
        raise UsageError(
            "restart-redis needs the local stack on the embedded Redis (this one uses "
            f"{redact_url(redis_url)}); start it without --redis, or leave restart-redis out"
        )


def _same_server(a: str | None, b: str) -> bool:
    if not a:
        return False
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname, pa.port) == (pb.hostname, pb.port)


def restart_redis(redis_url: str) -> dict[str, Any]:
    """Crash the stack's (embedded) Redis and start an empty one on the same port."""
    check_restartable(redis_url)
    started = time.monotonic()
    before, after = embedded.restart_empty()
    if after.url is None:
        raise BackendUnavailable("the embedded Redis did not come back")
    return {
        "old_pid": before.pid,
        "new_pid": after.pid,
        "port": after.port,
        "down_s": round(time.monotonic() - started, 2),
    }
